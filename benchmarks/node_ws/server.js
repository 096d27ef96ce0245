// A bare Node.js `ws` broadcast server speaking just enough of roomcast.v1, the baseline
// `benchmarks/fanout.py --targets node` measures roomcast against (issue 10): no storage,
// no framework, as the Python `baseline` target is. Each posted message gets the room's
// next seq, is encoded once and sent to every connection of the room (the broadcast of
// ws's own README), then acked. Rooms are URL paths. Usage: node server.js PORT
"use strict";
const { WebSocketServer, WebSocket } = require("ws");

const SUBPROTOCOL = "roomcast.v1";
const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error("usage: node server.js PORT");
  process.exit(2);
}

const rooms = new Map(); // path -> Set of sockets
const seqs = new Map(); // path -> last seq

const server = new WebSocketServer({
  host: "127.0.0.1",
  port,
  perMessageDeflate: false, // as roomcast serve and the Python baseline
  maxPayload: 1 << 20,
  handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
});

server.on("connection", (ws, request) => {
  const path = request.url || "/";
  let members = rooms.get(path);
  if (members === undefined) rooms.set(path, (members = new Set()));
  members.add(ws);
  ws.send(JSON.stringify({ type: "joined", room: path, seq: seqs.get(path) || 0 }));
  ws.on("message", (raw) => {
    const posted = JSON.parse(raw);
    const seq = (seqs.get(path) || 0) + 1;
    seqs.set(path, seq);
    const frame = JSON.stringify({
      type: "message",
      room: path,
      message: posted.message,
      kind: "chat",
      user: null,
      ts: new Date().toISOString(),
      seq,
      client_id: posted.client_id === undefined ? null : posted.client_id,
    });
    for (const member of members) {
      if (member.readyState === WebSocket.OPEN) member.send(frame);
    }
    ws.send(JSON.stringify({ type: "ack", client_id: posted.client_id, seq }));
  });
  ws.on("close", () => members.delete(ws));
  ws.on("error", () => members.delete(ws));
});

server.on("listening", () => console.log(`node ws baseline on 127.0.0.1:${port}`));
process.on("SIGTERM", () => {
  for (const ws of server.clients) ws.terminate();
  server.close(() => process.exit(0));
});
