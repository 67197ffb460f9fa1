// koa.js — Koa with @koa/router, as in the Koa cluster tutorial.
//
// GET /          -> "process <pid> count <n>"
// GET /stop      -> answers, then exits with code 1
// GET /check     -> blocks the event loop (and a CPU) for 3000 ms, or ?ms=N, then answers:
//                   a stand-in for heavy synchronous work, to show one busy worker does not
//                   stall the others
// Every response carries X-Response-Time (ms spent in the middleware stack).
'use strict';

const Koa = require('koa');
const Router = require('@koa/router');

const port = Number(process.env.PORT || 8000);
const app = new Koa();
const router = new Router();
let count = 0;

// Outermost middleware: time everything below it.
app.use(async (ctx, next) => {
  const start = process.hrtime.bigint();
  await next();
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  ctx.set('X-Response-Time', `${ms.toFixed(3)}ms`);
  ctx.set('X-Worker-Pid', String(process.pid));
});

router.get('/', (ctx) => {
  count += 1;
  ctx.body = `process ${process.pid} count ${count}\n`;
});

router.get('/stop', (ctx) => {
  console.log(`process ${process.pid} stopping on request`);
  ctx.res.on('finish', () => process.exit(1));
  ctx.body = `process ${process.pid} stopping\n`;
});

router.get('/check', (ctx) => {
  const requested = Number(ctx.query.ms);
  const ms = Number.isFinite(requested) && requested >= 0 ? requested : 3000;
  const start = Date.now();
  while (Date.now() - start < ms) {
    // Busy wait on purpose: nothing else runs in this process meanwhile.
  }
  ctx.body = `process ${process.pid} busy for ${ms} ms\n`;
});

app.use(router.routes());
app.use(router.allowedMethods());
app.on('error', (err) => console.error(`koa: ${err.message}`));

app.listen(port, () => {
  console.log(`koa: process ${process.pid} listening on port ${port}`);
});
