// node-cluster.js — the baseline: Node's own cluster module as the primary of an
// unmodified app (the same examples/node/*.js apps herd runs).
//
//   node bench/node-cluster.js N rr|none APP.js [ARGS...]
//
// Forks N workers of APP.js with cluster.schedulingPolicy SCHED_RR ("rr", Node's default
// on Linux) or SCHED_NONE ("none": the workers share the listening socket and the kernel
// picks who accepts). A worker that exits is forked again at once (as in the tutorial of
// seed 003). SIGINT/SIGTERM: disconnect/kill the workers and exit. Prints
// "node-cluster: worker <pid> online" per worker on stderr.
'use strict';

const cluster = require('node:cluster');
const path = require('node:path');

const [n, policy, app, ...args] = process.argv.slice(2);
const workers = Number(n);
if (!Number.isInteger(workers) || workers < 1 || !['rr', 'none'].includes(policy) || !app) {
  console.error('usage: node node-cluster.js N rr|none APP.js [ARGS...]');
  process.exit(2);
}

// Must be set before the first fork.
cluster.schedulingPolicy = policy === 'rr' ? cluster.SCHED_RR : cluster.SCHED_NONE;
cluster.setupPrimary({ exec: path.resolve(app), args, silent: false });

let stopping = false;
cluster.on('online', (w) => console.error(`node-cluster: worker ${w.process.pid} online`));
cluster.on('exit', (w, code, signal) => {
  if (stopping) return;
  console.error(`node-cluster: worker ${w.process.pid} exited (${signal || code}); forking another`);
  cluster.fork();
});

for (let i = 0; i < workers; i++) cluster.fork();

function stop() {
  if (stopping) process.exit(1);
  stopping = true;
  for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
  setTimeout(() => process.exit(0), 2000).unref();
  cluster.on('exit', () => {
    if (Object.keys(cluster.workers).length === 0) process.exit(0);
  });
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
