// Recreated from the public repository shadankhan108/Task-6.2HD (ecosystem.config.js), with stand-in apps.
module.exports = {
    apps: [
      {
        name: "task6.2hd",
        script: "index.js",
        instances: "max",
        exec_mode: "cluster",
        env: {
          NODE_ENV: "development",
          PORT: 3000
        },
        env_production: {
          NODE_ENV: "production",
          PORT: 80
        }
      }
    ]
  };
