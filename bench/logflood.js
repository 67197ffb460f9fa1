// logflood.js — bench/daemon.sh's log writer: LINES (default 1,000,000) lines of
// `line <i> xxxx…` (40 x), one console.log each, as fast as Node writes them;
// then it stays up (idle), so no supervisor restarts it and writes them again.
'use strict';

const n = Number(process.env.LINES || 1000000);
const pad = 'x'.repeat(40);
for (let i = 0; i < n; i++) console.log(`line ${i} ${pad}`);
setInterval(() => {}, 1 << 30);
