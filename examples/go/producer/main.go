// Command producer writes a business row and its event in one transaction, keyed for retries.
//
//	OUTBOX_DSN=... [OUTBOX_TOPIC=orders] producer ORDER_ID STATUS
//
// Run it twice with the same arguments (a client retry): the second run finds the event of the
// first through its idempotency key and enqueues nothing new. Prints the event id.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"

	"github.com/jackc/pgx/v5"
)

func pay(ctx context.Context, conn *pgx.Conn, topic string, orderID int64, status string) (string, error) {
	payload, err := json.Marshal(map[string]any{"order": orderID, "status": status})
	if err != nil {
		return "", err
	}
	var eventID string
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx,
			"INSERT INTO orders (id, status) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status",
			orderID, status); err != nil {
			return err
		}
		// pgx asks the server for the parameter types, and enqueue has a bytea and a jsonb
		// overload: without the casts the call is ambiguous. payload and headers are JSON text.
		return tx.QueryRow(ctx,
			"SELECT outbox.enqueue($1::text, $2::text, $3::jsonb, $4::jsonb, $5::text)::text",
			topic, strconv.FormatInt(orderID, 10), string(payload), `{"type": "OrderStatus"}`,
			fmt.Sprintf("order-%d-%s", orderID, status)).Scan(&eventID)
	})
	return eventID, err
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: producer ORDER_ID STATUS")
		os.Exit(2)
	}
	orderID, err := strconv.ParseInt(os.Args[1], 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ORDER_ID: %v\n", err)
		os.Exit(2)
	}
	topic := os.Getenv("OUTBOX_TOPIC")
	if topic == "" {
		topic = "orders"
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, os.Getenv("OUTBOX_DSN"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close(ctx)
	eventID, err := pay(ctx, conn, topic, orderID, os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(eventID)
}
