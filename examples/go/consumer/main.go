// Command consumer applies each event of the topic once, through the inbox
// (schema/inbox/0001_inbox.sql).
//
//	CONSUMER_DSN=... KAFKA_BOOTSTRAP=... consumer TOPIC GROUP EXPECTED
//
// Stops after EXPECTED messages (applied or already applied). Kafka delivers at least once; the
// event id is recorded in the same transaction as the business change, and the offset is
// committed only after it, so a redelivered event is skipped.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kgo"
)

type orderStatus struct {
	Order  int64  `json:"order"`
	Status string `json:"status"`
}

// apply records the event in the inbox and, only if it is new, writes the projection row, in
// one transaction. Reports whether the event was new.
func apply(ctx context.Context, db *pgx.Conn, eventID string, event orderStatus) (bool, error) {
	for { // a concurrent redelivery at REPEATABLE READ/SERIALIZABLE ends in 40001: retry
		var fresh bool
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			if err := tx.QueryRow(ctx, "SELECT inbox.record($1::text, $2::uuid)",
				"orders-projection", eventID).Scan(&fresh); err != nil || !fresh {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO order_projection (event_id, order_id, status) VALUES ($1::uuid, $2, $3)",
				eventID, event.Order, event.Status)
			return err
		})
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01") {
			continue
		}
		return fresh, err
	}
}

func header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

func run(ctx context.Context, topic, group string, expected int) error {
	db, err := pgx.Connect(ctx, os.Getenv("CONSUMER_DSN"))
	if err != nil {
		return err
	}
	defer db.Close(ctx)
	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(os.Getenv("KAFKA_BOOTSTRAP"), ",")...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.DisableAutoCommit(),
	)
	if err != nil {
		return err
	}
	defer client.Close()
	for seen := 0; seen < expected; {
		fetches := client.PollFetches(ctx)
		if fetches.IsClientClosed() {
			return kgo.ErrClientClosed
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		// Other fetch errors (a leader moving, a broker restarting) are retried by the client.
		for _, r := range fetches.Records() {
			if seen == expected {
				break
			}
			eventID, ok := header(r, "outbox-event-id")
			if !ok {
				return fmt.Errorf("%s/%d@%d: no outbox-event-id header", r.Topic, r.Partition, r.Offset)
			}
			var event orderStatus
			if err := json.Unmarshal(r.Value, &event); err != nil {
				return fmt.Errorf("event %s: %w", eventID, err)
			}
			fresh, err := apply(ctx, db, eventID, event)
			if err != nil {
				return fmt.Errorf("event %s: %w", eventID, err)
			}
			// Only after the transaction committed.
			if err := client.CommitRecords(ctx, r); err != nil {
				return err
			}
			if fresh {
				fmt.Println("applied", eventID)
			} else {
				fmt.Println("skipped", eventID)
			}
			seen++
		}
	}
	return nil
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: consumer TOPIC GROUP EXPECTED")
		os.Exit(2)
	}
	expected, err := strconv.Atoi(os.Args[3])
	if err != nil {
		fmt.Fprintf(os.Stderr, "EXPECTED: %v\n", err)
		os.Exit(2)
	}
	if err := run(context.Background(), os.Args[1], os.Args[2], expected); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
