// A Deno server that listens on $PORT by itself with SO_REUSEPORT (Deno's
// `reusePort`, which needs --unstable-net), so a new instance can listen
// beside the old one. Each answer is the process id, with the $VERSION it
// runs as a header. On SIGINT it stops listening, finishes the requests it
// has, and exits. $FAIL_AT_START=1 makes it a new version that cannot start.
if (Deno.env.get("FAIL_AT_START") === "1") {
  console.error("FAIL_AT_START=1: this version cannot start");
  Deno.exit(1);
}
const server = Deno.serve(
  {
    hostname: "127.0.0.1",
    port: Number(Deno.env.get("PORT")),
    reusePort: true,
    onListen: ({ port }) => console.log(`deno ${Deno.version.deno} pid ${Deno.pid} listening on ${port}`),
  },
  () =>
    new Response(`${Deno.pid}\n`, {
      headers: { "x-pid": `${Deno.pid}`, "x-version": Deno.env.get("VERSION") ?? "" },
    }),
);
Deno.addSignalListener("SIGINT", async () => {
  await server.shutdown();
  Deno.exit(0);
});
