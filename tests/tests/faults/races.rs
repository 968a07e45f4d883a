//! Fault tier (issue #9): writers racing on one aggregate. Concurrent catalog commands on one
//! product all land — the command bus reloads and re-handles after a lost write race — and the
//! event log shows every update, none lost; the same payment intent delivered a hundred times at
//! once with two different payloads places exactly one order, the other payload answered 409.

use futures::future::join_all;
use mpanel_tests::faults::{sealed, settle, verify_log, Delivery, INSTANT_PROVISIONERS};
use mpanel_tests::reliability::{self, Tally};
use mpanel_tests::TestApp;
use serde_json::{json, Value};
use uuid::Uuid;

/// Concurrent requests per round: few enough that the bus's 10 conflict retries always suffice.
const RACERS: usize = 6;

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_catalog_commands_on_one_product_all_land_and_none_is_lost() {
    // The bus logs each lost write race at debug: that is how the test knows it raced.
    let app = TestApp::spawn_with(&[("RUST_LOG", "info,mpanel_adapters::bus=debug")]).await;
    let token = app.admin_token().await;
    let product = format!("{}/api/products/{}", app.url, app.product_id);
    let mut prices: Vec<String> = vec![];
    let mut rounds = 0;
    let mut last_name = String::new();
    let mut last_description = String::new();
    // Race rounds until the log shows a conflict retry happened (usually the first round).
    while rounds == 0 || !app.log().contains("write conflict; retrying") {
        rounds += 1;
        assert!(rounds <= 30, "no write race in 30 rounds of {RACERS}");
        last_name = format!("Hosting round {rounds}");
        last_description = format!("Described in round {rounds}");
        let mut requests = vec![
            app.http
                .patch(&product)
                .bearer_auth(&token)
                .json(&json!({ "name": last_name })),
            app.http
                .patch(&product)
                .bearer_auth(&token)
                .json(&json!({ "description": last_description })),
        ];
        for i in 0..RACERS - 2 {
            requests.push(
                app.http
                    .post(format!("{product}/prices"))
                    .bearer_auth(&token)
                    .json(&json!({
                        "amountMinor": 1000 * rounds + i,
                        "currency": "USD",
                        "interval": "month",
                    })),
            );
        }
        let answers = join_all(requests.into_iter().map(send)).await;
        for (status, body) in &answers[..2] {
            assert_eq!(*status, 200, "a racing PATCH: {body}");
        }
        for (status, body) in &answers[2..] {
            assert_eq!(*status, 201, "a racing price: {body}");
            prices.push(body["id"].as_str().expect("price id").to_owned());
        }
    }

    // No update lost: the read model (once caught up) shows both PATCHes of the last round and
    // every price any round added, and the log holds exactly one event per accepted command.
    app.eventually(
        60,
        "the catalog read model to show every update",
        || async {
            let (status, shown) = send(app.http.get(&product).bearer_auth(&token)).await;
            let ids: Vec<&str> = shown["prices"]
                .as_array()?
                .iter()
                .filter_map(|p| p["id"].as_str())
                .collect();
            (status == 200
                && shown["name"] == last_name.as_str()
                && shown["description"] == last_description.as_str()
                && prices.iter().all(|p| ids.contains(&p.as_str())))
            .then_some(())
        },
    )
    .await;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count(*) FROM events WHERE aggregate_id = $1 \
         AND event_type IN ('ProductUpdated', 'PriceAdded') GROUP BY event_type ORDER BY 1",
    )
    .bind(app.product_id.to_string())
    .fetch_all(&app.pool)
    .await
    .expect("product events");
    let n = |t: &str| counts.iter().find(|c| c.0 == t).map_or(0, |c| c.1);
    assert_eq!(
        n("PriceAdded") - 1,
        i64::try_from(prices.len()).expect("count"),
        "the seed's price plus one per accepted POST"
    );
    assert_eq!(
        n("ProductUpdated"),
        i64::from(2 * u8::try_from(rounds).expect("rounds")),
        "one event per accepted PATCH"
    );
    let sequences: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_id = $1 ORDER BY sequence")
            .bind(app.product_id.to_string())
            .fetch_all(&app.pool)
            .await
            .expect("sequences");
    assert!(
        sequences.iter().zip(1..).all(|(s, i)| *s == i),
        "the product's events are numbered 1..n without gaps: {sequences:?}"
    );
    sealed(&app, 60).await;
    verify_log(&app);
    reliability::fault(
        "Concurrent catalog commands (PATCH and new prices) racing on one product: conflict \
         retry, every update in the log",
        file!(),
        "concurrent_catalog_commands_on_one_product_all_land_and_none_is_lost",
        Tally::default(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_payment_intent_with_two_payloads_at_once_places_exactly_one_order() {
    let app = TestApp::spawn_with(INSTANT_PROVISIONERS).await;
    let payment = format!("pi_race_{}", Uuid::new_v4().simple());
    let domains = [
        format!(
            "a{}.example.net",
            &Uuid::new_v4().simple().to_string()[..10]
        ),
        format!(
            "b{}.example.net",
            &Uuid::new_v4().simple().to_string()[..10]
        ),
    ];
    let answers = join_all((0..100).map(|i| {
        let body = app.order_body(&payment, "owner@example.com", &domains[i % 2]);
        let request = app
            .http
            .post(format!("{}/api/orders", app.url))
            .header("x-internal-key", &app.webhook_secret)
            .json(&body);
        async move { (i % 2, send(request).await) }
    }))
    .await;

    let created: Vec<&(usize, (u16, Value))> = answers.iter().filter(|a| a.1 .0 == 201).collect();
    assert_eq!(created.len(), 1, "exactly one delivery creates the order");
    let winner = created[0].0;
    for (payload, (status, body)) in &answers {
        if *payload == winner {
            assert!(
                matches!(status, 200 | 201),
                "the winning payload is taken: {status} {body}"
            );
            assert_eq!(body["orderId"], created[0].1 .1["orderId"]);
        } else {
            assert_eq!(*status, 409, "the other payload conflicts: {body}");
            assert_eq!(body["type"], "urn:mpanel:problem:conflict");
        }
    }
    let placed: Vec<String> = sqlx::query_scalar(
        "SELECT payload->'OrderPlaced'->>'domain' FROM events WHERE event_type = 'OrderPlaced' \
         AND payload->'OrderPlaced'->>'payment' = $1",
    )
    .bind(&payment)
    .fetch_all(&app.pool)
    .await
    .expect("placed");
    assert_eq!(placed.len(), 1, "one OrderPlaced for the payment");
    let tally = settle(
        &app,
        &[Delivery {
            payment,
            domain: domains[winner].clone(),
            status: Some(201),
            content_type: None,
            problem_type: None,
        }],
        120,
    )
    .await;
    reliability::fault(
        "One payment intent delivered 100 times at once with two different payloads: one \
         order, the other payload 409",
        file!(),
        "one_payment_intent_with_two_payloads_at_once_places_exactly_one_order",
        tally,
    );
}
