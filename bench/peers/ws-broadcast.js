// A `ws` 8 broadcast server, the plain-WebSocket peer of roompin-bench's
// fan-out scenario: every text frame a client sends goes to every member of
// its room (the sender included, as roompin does), the room being the
// `meeting_id` query parameter. No JSON, no seq, no history: the least a
// chat server can do. Usage: node ws-broadcast.js HOST PORT
"use strict";
const http = require("http");
const { WebSocketServer, WebSocket } = require("ws");

const host = process.argv[2] || "127.0.0.1";
const port = Number(process.argv[3] || 19101);
const rooms = new Map();

const server = http.createServer((req, res) => {
  res.writeHead(req.url === "/healthz" ? 200 : 404);
  res.end();
});
// perMessageDeflate is off by default on the server; said here to be sure.
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 65536 });

wss.on("connection", (ws, req) => {
  const room = new URL(req.url, "http://x").searchParams.get("meeting_id") || "";
  let members = rooms.get(room);
  if (!members) rooms.set(room, (members = new Set()));
  members.add(ws);
  ws.on("message", (data, isBinary) => {
    // Send the received Buffer as text to everyone in the room: one frame
    // built per recipient by ws itself, as any ws broadcast does.
    for (const m of members) {
      if (m.readyState === WebSocket.OPEN) m.send(data, { binary: isBinary });
    }
  });
  ws.on("close", () => {
    members.delete(ws);
    if (members.size === 0) rooms.delete(room);
  });
  ws.on("error", () => {});
});

server.listen(port, host, () => console.log(`ws broadcast listening on ${host}:${port}`));
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(0));
