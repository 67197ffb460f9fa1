// express.js — the same two routes as hello.js, on Express.
//
// GET /     -> "process <pid> count <n>"
// GET /stop -> answers, then exits with code 1
'use strict';

const express = require('express');

const port = Number(process.env.PORT || 8000);
const app = express();
let count = 0;

app.use((req, res, next) => {
  res.set('X-Worker-Pid', String(process.pid));
  next();
});

app.get('/', (req, res) => {
  count += 1;
  res.type('text').send(`process ${process.pid} count ${count}\n`);
});

app.get('/stop', (req, res) => {
  console.log(`process ${process.pid} stopping on request`);
  res.on('finish', () => process.exit(1));
  res.type('text').send(`process ${process.pid} stopping\n`);
});

// Express 5 passes a listen error (such as EADDRINUSE) to this callback.
app.listen(port, (err) => {
  if (err) throw err;
  console.log(`express: process ${process.pid} listening on port ${port}`);
});
