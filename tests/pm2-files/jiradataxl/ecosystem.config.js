// Recreated from the public repository HubertNdunyo/JiraDataXl (ecosystem.config.js), with stand-in apps.
module.exports = {
  apps: [{
    name: 'dataapp-web',
    script: 'web_app.py',
    interpreter: 'python3',
    instances: 1,
    autorestart: true,
    watch: false,
    max_memory_restart: '1G',
    env: {
      PORT: 3545,
      PYTHONUNBUFFERED: 1
    },
    error_file: './logs/pm2-error.log',
    out_file: './logs/pm2-out.log',
    log_file: './logs/pm2-combined.log',
    time: true
  }]
};
