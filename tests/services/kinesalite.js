// kinesalite on 127.0.0.1 only (its CLI binds every interface): node kinesalite.js PORT [DIR]
const kinesalite = require('kinesalite');
const [port, path] = process.argv.slice(2);
const opts = { createStreamMs: 20, deleteStreamMs: 20, updateStreamMs: 20, shardLimit: 100 };
if (path) opts.path = path;
kinesalite(opts).listen(Number(port), '127.0.0.1', (err) => {
  if (err) throw err;
});
