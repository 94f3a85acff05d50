from django.conf import settings
from django.db import models

ROLES = [("cliente", "cliente"), ("proveedor", "proveedor"), ("admin", "admin")]


class Profile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    role = models.CharField(max_length=16, choices=ROLES, default="cliente")


class Reservation(models.Model):
    cliente = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    proveedor = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    servicio_id = models.CharField(max_length=64)
    fecha = models.DateTimeField()
    estado = models.CharField(max_length=16, default="pendiente")
    created_at = models.DateTimeField(auto_now_add=True)

    def as_event(self) -> dict[str, object]:
        return {
            "id": str(self.pk),
            "clienteId": str(self.cliente_id),
            "proveedorId": str(self.proveedor_id),
            "servicioId": self.servicio_id,
            "fecha": self.fecha.isoformat(),
            "estado": self.estado,
        }

    def rooms(self) -> list[str]:
        return [f"proveedor_{self.proveedor_id}", f"cliente_{self.cliente_id}", "admin_dashboard"]


class Payment(models.Model):
    reservation = models.ForeignKey(Reservation, models.SET_NULL, null=True, blank=True)
    cliente = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    proveedor = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")


class Comment(models.Model):
    servicio_id = models.CharField(max_length=64)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE)
    text = models.TextField()
    rating = models.PositiveSmallIntegerField(null=True, blank=True)
