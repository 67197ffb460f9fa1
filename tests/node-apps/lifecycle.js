// lifecycle.js — an app whose starts and exits the restart tests read.
//
// - At start it appends `start <pid> <ms since the epoch>` to $LIFE_LOG.
// - While the file $NEEDS is missing (its dependency is down) it prints
//   `dependency missing` and exits 1 at once, before listening.
// - GET /exit?code=N answers, appends `exit <pid> <N> <ms>`, then exits with N.
// - GET /env answers its whole environment as JSON; anything else `process <pid>`.
'use strict';

const fs = require('node:fs');
const http = require('node:http');

const life = process.env.LIFE_LOG;
const note = (line) => {
  if (life) fs.appendFileSync(life, `${line}\n`);
};
note(`start ${process.pid} ${Date.now()}`);

if (process.env.NEEDS && !fs.existsSync(process.env.NEEDS)) {
  console.error('dependency missing');
  process.exit(1);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/exit') {
    const code = Number(url.searchParams.get('code') || 0);
    res.end(`process ${process.pid}\n`, () => {
      note(`exit ${process.pid} ${code} ${Date.now()}`);
      process.exit(code);
    });
  } else if (url.pathname === '/env') {
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify(process.env));
  } else {
    res.end(`process ${process.pid}\n`);
  }
});
server.listen(Number(process.env.PORT || 8000), () => {
  console.log(`lifecycle: process ${process.pid} listening`);
});
