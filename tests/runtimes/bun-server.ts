// A Bun server that listens on $PORT by itself with SO_REUSEPORT (Bun's
// `reusePort`), so a new instance can listen beside the old one. Each answer
// is the process id, with the $VERSION it runs as a header. On SIGINT it
// stops listening, finishes the requests it has, and exits.
// $FAIL_AT_START=1 makes it a new version that cannot start.
if (process.env.FAIL_AT_START === "1") {
  console.error("FAIL_AT_START=1: this version cannot start");
  process.exit(1);
}
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT),
  reusePort: true,
  fetch() {
    return new Response(`${process.pid}\n`, {
      headers: { "x-pid": `${process.pid}`, "x-version": process.env.VERSION ?? "" },
    });
  },
});
console.log(`bun ${Bun.version} pid ${process.pid} listening on ${server.port}`);
process.on("SIGINT", async () => {
  await server.stop();
  process.exit(0);
});
