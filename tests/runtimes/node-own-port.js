// A Node server that binds its own port even under a cluster primary
// (`exclusive: true`): $PORT plus its instance number. Each answer is the
// process id, with the $VERSION it runs as a header. The primary is not told
// when it listens (Node asks it nothing for an exclusive server), so it says
// 'ready' itself: run it with wait_ready.
const http = require("http");
if (process.env.FAIL_AT_START === "1") {
  console.error("FAIL_AT_START=1: this version cannot start");
  process.exit(1);
}
const port = Number(process.env.PORT) + Number(process.env.NODE_APP_INSTANCE || 0);
const server = http.createServer((req, res) => {
  res.setHeader("x-pid", `${process.pid}`);
  res.setHeader("x-version", process.env.VERSION || "");
  res.end(`${process.pid}\n`);
});
server.listen({ host: "127.0.0.1", port, exclusive: true }, () => {
  console.log(`node pid ${process.pid} listening on ${port}`);
  if (process.send) process.send("ready");
});
process.on("SIGINT", () => server.close(() => process.exit(0)));
