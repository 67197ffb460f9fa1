// https.js — an https server, to check TLS servers work as workers.
//
// GET / -> "process <pid>"
//
// It uses the self-signed, test-only certificate in tls/ (valid for 127.0.0.1 and
// localhost): `curl --cacert examples/node/tls/cert.pem https://127.0.0.1:8000/`.
'use strict';

const fs = require('node:fs');
const https = require('node:https');
const path = require('node:path');

const port = Number(process.env.PORT || 8000);
const tls = path.join(__dirname, 'tls');

const options = {
  key: fs.readFileSync(path.join(tls, 'key.pem')),
  cert: fs.readFileSync(path.join(tls, 'cert.pem')),
};

const server = https.createServer(options, (req, res) => {
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  res.setHeader('X-Worker-Pid', String(process.pid));
  res.end(`process ${process.pid}\n`);
});

server.listen(port, () => {
  console.log(`https: process ${process.pid} listening on port ${port}`);
});
