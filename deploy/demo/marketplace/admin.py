from django.contrib import admin

from gateway.contrib.django import publish_on_commit
from marketplace.models import Comment, Payment, Profile, Reservation


@admin.action(description="Accept selected reservations (notifies the gateway)")
def accept(modeladmin: admin.ModelAdmin, request: object, queryset: object) -> None:
    for reservation in queryset:  # type: ignore[attr-defined]
        reservation.estado = "aceptada"
        reservation.save(update_fields=["estado"])
        publish_on_commit(reservation.rooms(), "reservation_accepted", reservation.as_event())


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = ("id", "cliente", "proveedor", "servicio_id", "fecha", "estado")
    actions = [accept]


admin.site.register(Profile)
admin.site.register(Payment)
admin.site.register(Comment)
