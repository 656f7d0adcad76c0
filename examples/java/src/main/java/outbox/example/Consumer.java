package outbox.example;

import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Applies each event of the topic once, through the inbox (schema/inbox/0001_inbox.sql).
 *
 * <pre>CONSUMER_DSN=jdbc:postgresql://... KAFKA_BOOTSTRAP=... java ... outbox.example.Consumer TOPIC GROUP EXPECTED</pre>
 *
 * Stops after EXPECTED messages (applied or already applied). Kafka delivers at least once; the
 * event id is recorded in the same transaction as the business change, and the offset is
 * committed only after it, so a redelivered event is skipped.
 */
public final class Consumer {
    private Consumer() {}

    /** Records the event in the inbox and, only if it is new, applies it; true if it was new. */
    static boolean apply(Connection db, String eventId, byte[] payload) throws SQLException {
        db.setAutoCommit(false);
        for (;;) { // a concurrent redelivery at REPEATABLE READ/SERIALIZABLE ends in 40001: retry
            try {
                boolean fresh;
                try (PreparedStatement st = db.prepareStatement("SELECT inbox.record(?::text, ?::uuid)")) {
                    st.setString(1, "orders-projection");
                    st.setString(2, eventId);
                    try (ResultSet rs = st.executeQuery()) {
                        rs.next();
                        fresh = rs.getBoolean(1);
                    }
                }
                if (fresh) {
                    // PostgreSQL reads the JSON payload here, so the example needs no JSON library.
                    try (PreparedStatement st = db.prepareStatement(
                            "INSERT INTO order_projection (event_id, order_id, status)"
                                    + " SELECT ?::uuid, (p->>'order')::bigint, p->>'status' FROM (SELECT ?::jsonb AS p) e")) {
                        st.setString(1, eventId);
                        st.setString(2, new String(payload, StandardCharsets.UTF_8));
                        st.executeUpdate();
                    }
                }
                db.commit();
                return fresh;
            } catch (SQLException e) {
                db.rollback();
                if (!"40001".equals(e.getSQLState()) && !"40P01".equals(e.getSQLState())) {
                    throw e;
                }
            }
        }
    }

    public static void main(String[] args) throws SQLException {
        if (args.length != 3) {
            System.err.println("usage: Consumer TOPIC GROUP EXPECTED");
            System.exit(2);
        }
        int expected = Integer.parseInt(args[2]);
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, System.getenv("KAFKA_BOOTSTRAP"));
        props.put(ConsumerConfig.GROUP_ID_CONFIG, args[1]);
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        try (Connection db = DriverManager.getConnection(System.getenv("CONSUMER_DSN"));
                KafkaConsumer<byte[], byte[]> consumer =
                        new KafkaConsumer<>(props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            consumer.subscribe(List.of(args[0]));
            int seen = 0;
            while (seen < expected) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofSeconds(1))) {
                    Header h = r.headers().lastHeader("outbox-event-id");
                    if (h == null) {
                        throw new IllegalStateException(r.topic() + "/" + r.partition() + "@" + r.offset()
                                + ": no outbox-event-id header");
                    }
                    String eventId = new String(h.value(), StandardCharsets.UTF_8);
                    boolean fresh = apply(db, eventId, r.value());
                    // Only after the transaction committed.
                    consumer.commitSync(Map.of(new TopicPartition(r.topic(), r.partition()),
                            new OffsetAndMetadata(r.offset() + 1)));
                    System.out.println((fresh ? "applied " : "skipped ") + eventId);
                    if (++seen == expected) {
                        break;
                    }
                }
            }
        }
    }
}
