// Writes a business row and its event in one transaction, keyed for retries.
//   OUTBOX_DSN=... [OUTBOX_TOPIC=orders] node producer.js ORDER_ID STATUS
// Run it twice with the same arguments (a client retry): the second run finds the event of
// the first through its idempotency key and enqueues nothing new. Prints the event id.
const { Client } = require('pg');

async function main(orderId, status) {
  const db = new Client({ connectionString: process.env.OUTBOX_DSN });
  await db.connect();
  try {
    await db.query('BEGIN');
    await db.query(
      'INSERT INTO orders (id, status) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status',
      [orderId, status]);
    // node-postgres sends untyped parameters and enqueue has a bytea and a jsonb overload: cast.
    const r = await db.query(
      'SELECT outbox.enqueue($1::text, $2::text, $3::jsonb, $4::jsonb, $5::text)::text AS event_id',
      [process.env.OUTBOX_TOPIC || 'orders', String(orderId),
       JSON.stringify({ order: Number(orderId), status }), JSON.stringify({ type: 'OrderStatus' }),
       `order-${orderId}-${status}`]);
    await db.query('COMMIT');
    console.log(r.rows[0].event_id);
  } catch (e) {
    await db.query('ROLLBACK').catch(() => {});
    throw e;
  } finally {
    await db.end();
  }
}

main(process.argv[2], process.argv[3]).catch((e) => { console.error(e); process.exit(1); });
