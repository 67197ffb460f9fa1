// Recreated from the public repository azconcept-droid/fluentd (app-on-local/ecosystem.config.js), with stand-in apps.
// (As published, the file misses three commas, a syntax error for pm2 and herd alike; they are added here.)
module.exports = {
  apps: [{
    name: 'app',
    cwd: "app",
    script: 'npm', // or your entry file
    args: "run start",
    instances: 1,
    autorestart: true,
    watch: false,
    max_memory_restart: '1G',
    env: {
      NODE_ENV: 'development',
      PORT: 5005
    },
    // PM2 will write logs to ~/.pm2/logs/
    error_file: '~/.pm2/logs/app-error.log',
    out_file: '~/.pm2/logs/app-out.log',
    log_date_format: 'YYYY-MM-DD HH:mm:ss',
    merge_logs: true
  }]
};
