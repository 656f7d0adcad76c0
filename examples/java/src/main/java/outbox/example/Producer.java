package outbox.example;

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;

/**
 * Writes a business row and its event in one transaction, keyed for retries.
 *
 * <pre>OUTBOX_DSN=jdbc:postgresql://... [OUTBOX_TOPIC=orders] java ... outbox.example.Producer ORDER_ID STATUS</pre>
 *
 * Run it twice with the same arguments (a client retry): the second run finds the event of the
 * first through its idempotency key and enqueues nothing new. Prints the event id.
 */
public final class Producer {
    private Producer() {}

    static String pay(Connection db, String topic, long orderId, String status) throws SQLException {
        db.setAutoCommit(false);
        try {
            try (PreparedStatement st = db.prepareStatement(
                    "INSERT INTO orders (id, status) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status")) {
                st.setLong(1, orderId);
                st.setString(2, status);
                st.executeUpdate();
            }
            String eventId;
            // The driver sends setString() as varchar, which PostgreSQL does not turn into jsonb
            // by itself (and with stringtype=unspecified the bytea and jsonb overloads of
            // enqueue are ambiguous): cast every parameter.
            try (PreparedStatement st = db.prepareStatement(
                    "SELECT outbox.enqueue(?::text, ?::text, ?::jsonb, ?::jsonb, ?::text)::text")) {
                st.setString(1, topic);
                st.setString(2, Long.toString(orderId));
                st.setString(3, "{\"order\": " + orderId + ", \"status\": " + jsonString(status) + "}");
                st.setString(4, "{\"type\": \"OrderStatus\"}");
                st.setString(5, "order-" + orderId + "-" + status);
                try (ResultSet rs = st.executeQuery()) {
                    rs.next();
                    eventId = rs.getString(1);
                }
            }
            db.commit();
            return eventId;
        } catch (SQLException e) {
            db.rollback();
            throw e;
        }
    }

    /** A JSON string literal (a service would use its JSON library; this example has none). */
    static String jsonString(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('"').toString();
    }

    public static void main(String[] args) throws SQLException {
        if (args.length != 2) {
            System.err.println("usage: Producer ORDER_ID STATUS");
            System.exit(2);
        }
        String topic = System.getenv().getOrDefault("OUTBOX_TOPIC", "orders");
        try (Connection db = DriverManager.getConnection(System.getenv("OUTBOX_DSN"))) {
            System.out.println(pay(db, topic, Long.parseLong(args[0]), args[1]));
        }
    }
}
