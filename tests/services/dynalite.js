// dynalite (DynamoDB) on 127.0.0.1 only, in memory: node dynalite.js PORT
const dynalite = require('dynalite');
const [port] = process.argv.slice(2);
dynalite({ createTableMs: 20, deleteTableMs: 20, updateTableMs: 20 }).listen(Number(port), '127.0.0.1', (err) => {
  if (err) throw err;
});
