// Applies each event of the topic once, through the inbox (schema/inbox/0001_inbox.sql).
//   CONSUMER_DSN=... KAFKA_BOOTSTRAP=... node consumer.js TOPIC GROUP EXPECTED
// Stops after EXPECTED messages (applied or already applied). The event id is recorded in the
// same transaction as the business change, and the offset is committed only after it, so a
// redelivered event is skipped.
const { Client } = require('pg');
const { Kafka, logLevel } = require('kafkajs');

async function apply(db, eventId, payload) {
  for (;;) {  // a concurrent redelivery at REPEATABLE READ/SERIALIZABLE ends in 40001: retry
    try {
      await db.query('BEGIN');
      const r = await db.query('SELECT inbox.record($1::text, $2::uuid) AS fresh', ['orders-projection', eventId]);
      if (r.rows[0].fresh) {
        await db.query('INSERT INTO order_projection (event_id, order_id, status) VALUES ($1::uuid, $2, $3)',
                       [eventId, payload.order, payload.status]);
      }
      await db.query('COMMIT');
      return r.rows[0].fresh;
    } catch (e) {
      await db.query('ROLLBACK').catch(() => {});
      if (e.code !== '40001' && e.code !== '40P01') throw e;
    }
  }
}

async function main(topic, group, expected) {
  const db = new Client({ connectionString: process.env.CONSUMER_DSN });
  await db.connect();
  const kafka = new Kafka({ brokers: process.env.KAFKA_BOOTSTRAP.split(','), logLevel: logLevel.ERROR });
  const consumer = kafka.consumer({ groupId: group, readUncommitted: false });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  let seen = 0;
  await new Promise((resolve, reject) => {
    consumer.run({
      autoCommit: false,
      eachMessage: async ({ topic: t, partition, message }) => {
        const eventId = message.headers['outbox-event-id'].toString();
        const fresh = await apply(db, eventId, JSON.parse(message.value.toString()));
        // Only after the transaction committed.
        await consumer.commitOffsets([{ topic: t, partition, offset: (BigInt(message.offset) + 1n).toString() }]);
        console.log(`${fresh ? 'applied' : 'skipped'} ${eventId}`);
        if (++seen >= expected) resolve();
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  await db.end();
}

main(process.argv[2], process.argv[3], Number(process.argv[4])).catch((e) => { console.error(e); process.exit(1); });
