// A Socket.IO 4 broadcast server, the Socket.IO peer of roompin-bench's
// fan-out scenario: each client joins the room named by its handshake's
// `meeting_id` query parameter, and every `m` event it emits is sent to the
// whole room with `io.to(room).emit` (the sender included, as roompin does).
// WebSocket transport only (no long-polling upgrade dance), no compression.
// Engine.IO pings every 120 s: the loadgen does not answer pings, and no
// bench run keeps a connection that long. Usage: node socketio-broadcast.js HOST PORT
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const host = process.argv[2] || "127.0.0.1";
const port = Number(process.argv[3] || 19102);

const server = http.createServer((req, res) => {
  res.writeHead(req.url === "/healthz" ? 200 : 404);
  res.end();
});
const io = new Server(server, {
  transports: ["websocket"],
  perMessageDeflate: false,
  serveClient: false,
  pingInterval: 120000,
  pingTimeout: 60000,
});

io.on("connection", (socket) => {
  const room = String(socket.handshake.query.meeting_id || "");
  socket.join(room);
  socket.on("m", (text) => {
    io.to(room).emit("m", text);
  });
});

server.listen(port, host, () => console.log(`socket.io broadcast listening on ${host}:${port}`));
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(0));
