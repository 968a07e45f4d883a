-- Stripe webhook deliveries already handled (DESIGN §5, ADR 0009).
--
-- `POST /api/webhooks/stripe` records an event id here only after the event was handled: a
-- `payment_intent.succeeded` once `place_order` succeeded (order_id = the order it placed or
-- recognised), any other type when it was acknowledged and ignored (order_id NULL). A replayed
-- event id is answered 200 from this table without touching intake. A delivery that failed is
-- not recorded, so Stripe's retry (or a manual resend from its dashboard) runs intake again.
--
-- This is not the correctness mechanism: intake is idempotent by payment intent on its own
-- (the order id is derived from it), so a crash between the order and this insert is harmless.
-- Not a read model either: nothing in the event log rebuilds it; do not truncate it on rebuilds.
CREATE TABLE stripe_events
(
    event_id    text PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 255),
    event_type  text        NOT NULL,
    order_id    uuid        NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Which Stripe deliveries concerned an order (support: "did Stripe tell us about this one?").
CREATE INDEX stripe_events_order ON stripe_events (order_id) WHERE order_id IS NOT NULL;
