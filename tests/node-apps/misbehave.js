// misbehave.js — abuses the IPC channel on request.
//
// GET /            -> "process <pid>"
// GET /malformed   -> writes "not json\n" straight to the channel's fd
// GET /big?mb=N    -> process.send() of one message of about N MB (default 10), then {after: 'big'}
// GET /flood?n=N   -> N process.send() calls in a loop (default 100000), the last {flood: 'last'}
'use strict';

const fs = require('node:fs');
const http = require('node:http');

const port = Number(process.env.PORT || 8000);

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  res.setHeader('X-Worker-Pid', String(process.pid));
  if (url.pathname === '/malformed') {
    const fd = process.channel && process.channel.fd;
    if (typeof fd !== 'number' || fd < 0) {
      res.statusCode = 500;
      res.end(`no channel fd (${fd})\n`);
      return;
    }
    fs.writeSync(fd, 'not json\n');
    console.log(`process ${process.pid} wrote a malformed line to fd ${fd}`);
    res.end(`process ${process.pid} malformed\n`);
  } else if (url.pathname === '/big') {
    const mb = Number(url.searchParams.get('mb') || 10);
    process.send({ big: 'x'.repeat(mb * 1024 * 1024) });
    process.send({ after: 'big' });
    console.log(`process ${process.pid} sent ${mb} MB`);
    res.end(`process ${process.pid} big\n`);
  } else if (url.pathname === '/flood') {
    const n = Number(url.searchParams.get('n') || 100000);
    for (let i = 0; i < n - 1; i++) process.send({ flood: i });
    process.send({ flood: 'last' });
    console.log(`process ${process.pid} queued ${n} messages`);
    res.end(`process ${process.pid} flood\n`);
  } else {
    res.end(`process ${process.pid}\n`);
  }
});

server.listen(port, () => console.log(`misbehave: process ${process.pid} listening`));
process.on('message', () => {});
