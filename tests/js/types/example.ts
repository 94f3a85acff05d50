// A front end written in TypeScript, as docs/clients.md shows it: the client comes from the npm
// package beside it (gateway/static/package.json), its types from client.d.ts. `tsc --noEmit`
// must accept this file; every `@ts-expect-error` line is a mistake the types must catch (tsc
// fails when such a line compiles).
import {
  type Ack,
  AuthError,
  type AuthSuccess,
  GatewayClient,
  GatewayError,
  type GatewayEvent,
  type RoomJoined,
  backoffDelay,
} from "django-ws-gateway-client";

interface Reservation {
  id: number;
  estado: string;
}

export async function main(token: string): Promise<string[]> {
  const client = new GatewayClient(["wss://gw-1.example.com/ws", "wss://gw-2.example.com/ws"], {
    token,
    backoffMaxMs: 5000,
  });
  const seen: string[] = [];
  const off = client.on<Reservation>("reservation_accepted", (event: GatewayEvent<Reservation>) => {
    seen.push(`${event.room}#${event.offset}: ${event.payload.estado}`);
  });
  client.onLifecycle("recovery_failed", ({ room }) => {
    seen.push(`refetch ${room}`);
  });
  client.onLifecycle("terminated", ({ code, reason }) => {
    seen.push(`${code}: ${reason}`);
  });

  const auth: AuthSuccess = await client.connect();
  const joined: RoomJoined = await client.join("service_12");
  seen.push(`${auth.userId} is ${auth.role} in ${auth.rooms.join(",")} at ${joined.offset}`);
  try {
    const ack: Ack = await client.createReservation({
      clienteId: auth.userId,
      proveedorId: "9",
      servicioId: "12",
      fecha: "2030-12-24",
    });
    seen.push(ack.eventId);
    await client.createPayment({ clienteId: auth.userId, proveedorId: "9", amount: "25.00" });
    await client.sendBusiness("comment_created", { servicioId: "12", text: "¡Muy bien!", rating: 5 });
  } catch (error) {
    if (error instanceof AuthError && error.terminal) return seen;
    if (error instanceof GatewayError) {
      const fieldErrors: Record<string, unknown> | null = error.fields;
      seen.push(`${error.code} ${error.field ?? ""} ${JSON.stringify(fieldErrors ?? {})}`);
    }
  }
  const presence = await client.presence("service_12");
  seen.push(String(presence.members?.length ?? presence.count ?? 0));
  seen.push(String(backoffDelay(3, 250, 10_000)));
  seen.push(client.state, String(client.stats.recoveries), String(client.since("service_12")?.offset));
  off();

  // @ts-expect-error money is a decimal string, never a number
  await client.createPayment({ clienteId: "1", proveedorId: "9", amount: 25 });
  // @ts-expect-error servicioId is required
  await client.createComment({ text: "no service" });
  // @ts-expect-error not a lifecycle event
  client.onLifecycle("reconnecting", () => undefined);
  // @ts-expect-error not a business event
  await client.sendBusiness("reservation_deleted", { id: 1 });
  // @ts-expect-error a token is required
  new GatewayClient("wss://gw.example.com/ws", {});
  // @ts-expect-error an event id is a string
  const wrongId: number = (await client.createComment({ servicioId: "1", text: "x" })).eventId;
  seen.push(String(wrongId));

  client.close();
  return seen;
}
