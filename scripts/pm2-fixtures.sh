#!/usr/bin/env bash
# Records pm2 7's real `jlist` and `dump.pm2` for tests/fixtures/pm2/, by hand
# (CI never needs pm2): installs pm2 from npm into a scratch folder, runs
# tests/fixtures/pm2/ecosystem.config.js under it with --env production,
# stops `ticker`, saves, and writes both files with the machine's paths and
# environment replaced by placeholders (@REPO@, @PM2_HOME@, @HOME@,
# @WEB_PORT@, @JOBS_PORT@, @LOGS@) that the tests fill in. Cleans up
# everything it started.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/tests/fixtures/pm2"
scratch=$(mktemp -d /tmp/herd-pm2-fixtures.XXXXXX)
export PM2_HOME="$scratch/home"
export WEB_PORT=18431 JOBS_PORT=18432 FIXTURE_LOGS="$scratch/logs"
mkdir -p "$FIXTURE_LOGS"
pm2="$scratch/node_modules/.bin/pm2"
cleanup() { "$pm2" kill >/dev/null 2>&1 || true; rm -rf "$scratch"; }
trap cleanup EXIT

(cd "$scratch" && npm init -y >/dev/null && npm i --no-audit --no-fund pm2@7 >/dev/null)
(cd "$repo" && "$pm2" start "$out/ecosystem.config.js" --env production >/dev/null)
"$pm2" stop ticker >/dev/null
sleep 2 # let pm2 sample CPU and memory once
"$pm2" jlist > "$scratch/jlist.json"
"$pm2" save >/dev/null
"$pm2" --version > "$scratch/version"

node - "$scratch" "$out" "$repo" <<'JS'
const fs = require('fs');
const [scratch, out, repo] = process.argv.slice(2);
const home = process.env.HOME;
const keep = new Set(['PATH', 'HOME', 'LANG', 'PORT', 'NODE_ENV', 'PM2_HOME', 'PM2_USAGE',
  'PM2_JSON_PROCESSING', 'PM2_INTERACTOR_PROCESSING', 'unique_id', 'web', 'jobs', 'ticker']);
const neutral = (text) => text
  .split(repo).join('@REPO@')
  .split(process.env.PM2_HOME).join('@PM2_HOME@')
  .split(process.env.FIXTURE_LOGS).join('@LOGS@')
  .split(home).join('@HOME@')
  .replace(/"PORT": "?18431"?/g, '"PORT": "@WEB_PORT@"')
  .replace(/"PORT": "?18432"?/g, '"PORT": "@JOBS_PORT@"');
// The shell's variables (duplicated at the top of pm2_env) are the machine's:
// keep a neutral few.
const trim = (env) => {
  for (const k of Object.keys(env.env || {})) if (!keep.has(k)) delete env.env[k];
  for (const k of Object.keys(env)) if (/^[A-Z_][A-Z0-9_]*$/.test(k) && !keep.has(k) && k !== 'NODE_APP_INSTANCE') delete env[k];
  if (env.env && env.env.PATH) env.env.PATH = '/usr/local/bin:/usr/bin:/bin';
  if (env.PATH) env.PATH = '/usr/local/bin:/usr/bin:/bin';
  env.username = 'user';
  return env;
};
const version = fs.readFileSync(`${scratch}/version`, 'utf8').trim();
const jlist = JSON.parse(fs.readFileSync(`${scratch}/jlist.json`, 'utf8'));
for (const p of jlist) trim(p.pm2_env);
fs.writeFileSync(`${out}/jlist.json`, neutral(JSON.stringify(jlist, null, 1)) + '\n');
const dump = JSON.parse(fs.readFileSync(`${process.env.PM2_HOME}/dump.pm2`, 'utf8'));
for (const p of dump) trim(p);
fs.writeFileSync(`${out}/dump.pm2`, neutral(JSON.stringify(dump, null, 1)) + '\n');
console.log(`recorded pm2 ${version}: ${jlist.length} processes in jlist.json and dump.pm2`);
JS
