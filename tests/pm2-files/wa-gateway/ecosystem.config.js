// Recreated from the public repository mimamch/wa-gateway (ecosystem.config.js), with stand-in apps.
module.exports = {
    apps : [
    {
      name      : "Start as Background Process with PM2",
      script    : "./index.js",
      instances : "1",
      exec_mode : "fork",
      env: {
        NODE_ENV: "production",
        PORT: 3007    
      }
    }
    ]
  }
