// Reference server for the benchmark: plain socket.io@4 with the same room semantics as
// Switchyard's Socket.IO endpoint — `join` (ack), `publish` (ack with the room offset; every
// member, the sender too, gets the event with (data, {room, offset, from})).
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.env.PORT || 3300);
const http = createServer();
const io = new Server(http, { transports: ["websocket", "polling"], maxHttpBufferSize: 1e6 });
const offsets = new Map();

io.on("connection", (socket) => {
  socket.on("join", ({ room } = {}, ack) => {
    socket.join(room);
    ack?.({ ok: true, room, offset: offsets.get(room) ?? 0 });
  });
  socket.on("publish", ({ room, event, data } = {}, ack) => {
    const offset = (offsets.get(room) ?? 0) + 1;
    offsets.set(room, offset);
    io.to(room).emit(event, data, { room, offset, from: null });
    ack?.({ ok: true, room, offset });
  });
});

// PORT=0 picks a free port; the line below names the real one (the bench smoke test waits for it).
http.listen(port, "127.0.0.1", () =>
  console.log(`reference socket.io server listening on ${http.address().port}`),
);
