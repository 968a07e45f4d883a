//! `/api/auth/*` black-box: login, hostile tokens, refresh rotation and reuse, logout, deleted
//! users, and that no secret reaches the server's log.

use mpanel_adapters::auth::jsonwebtoken::{self, Algorithm, EncodingKey, Header};
use mpanel_adapters::auth::{create_user, CreateUserError, Role, SecretString};
use mpanel_domain::values::Email;
use mpanel_tests::reliability;
use mpanel_tests::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const ADMIN: &str = "admin@migrahosting.test";

async fn post(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(format!("{}{path}", app.url))
        .json(body)
        .send()
        .await
        .expect("request")
}

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    post(
        app,
        "/api/auth/login",
        &json!({ "email": email, "password": password }),
    )
    .await
}

/// Logs `email` in; returns the session body.
async fn session_of(app: &TestApp, email: &str, password: &str) -> Value {
    let r = login(app, email, password).await;
    assert_eq!(r.status(), StatusCode::OK, "login of {email}");
    r.json().await.expect("JSON")
}

async fn admin_session(app: &TestApp) -> Value {
    session_of(app, ADMIN, &app.admin_password).await
}

fn access(session: &Value) -> String {
    session["accessToken"]
        .as_str()
        .expect("accessToken")
        .to_owned()
}

fn refresh_token(session: &Value) -> String {
    session["refreshToken"]
        .as_str()
        .expect("refreshToken")
        .to_owned()
}

async fn me(app: &TestApp, token: &str) -> reqwest::Response {
    app.http
        .get(format!("{}/api/auth/me", app.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    post(app, "/api/auth/refresh", &json!({ "refreshToken": token })).await
}

async fn assert_problem(r: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "problem+json for {status}"
    );
    r.json().await.expect("problem body")
}

async fn tenant_id(app: &TestApp) -> Uuid {
    sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1")
        .bind(&app.tenant)
        .fetch_one(&app.pool)
        .await
        .expect("tenant")
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims_of(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode_claims(token).expect("claims")
}

fn sign(alg: Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// A token with an arbitrary header, signed with HS256 and `secret` over `header.payload`.
fn with_header(header: &Value, claims: &Value, secret: &str) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret.as_bytes()),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{message}.{signature}")
}

#[tokio::test]
async fn the_seeded_admin_logs_in_and_sees_themself() {
    let app = TestApp::spawn().await;
    let r = login(&app, ADMIN, &app.admin_password).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let session: Value = r.json().await.expect("JSON");
    assert_eq!(session["expiresIn"], 900);
    assert_eq!(session["tokenType"], "Bearer");
    let tenant = tenant_id(&app).await;
    let user = &session["user"];
    assert_eq!(user["email"], ADMIN);
    assert_eq!(user["role"], "admin");
    assert_eq!(user["tenantId"], tenant.to_string());
    let refresh = refresh_token(&session);
    assert_eq!(refresh.len(), 64, "32 random bytes, hex");

    let claims = claims_of(&access(&session));
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["tid"], tenant.to_string());
    assert_eq!(claims["role"], "admin");
    assert_eq!(claims["iss"], "mpanel");
    assert_eq!(claims["aud"], "mpanel-api");
    let exp = claims["exp"].as_i64().expect("exp");
    assert_eq!(exp - claims["iat"].as_i64().expect("iat"), 900);
    assert!(claims["nbf"].is_i64() && claims["jti"].is_string());

    let r = me(&app, &access(&session)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let shown: Value = r.json().await.expect("JSON");
    assert_eq!(&shown, user);

    // Only the refresh token's SHA-256 is stored.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM refresh_tokens")
        .fetch_all(&app.pool)
        .await
        .expect("query");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].len(), 32);
    assert_ne!(stored[0], refresh.as_bytes());

    let r = app
        .http
        .get(format!("{}/api/auth/me", app.url))
        .send()
        .await
        .expect("request");
    assert_problem(r, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_the_same_401() {
    let app = TestApp::spawn().await;
    let wrong = login(&app, ADMIN, "not-the-password-at-all").await;
    let wrong = assert_problem(wrong, StatusCode::UNAUTHORIZED).await;
    let unknown = login(&app, "nobody@migrahosting.test", &app.admin_password).await;
    let unknown = assert_problem(unknown, StatusCode::UNAUTHORIZED).await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong["type"], "urn:mpanel:problem:unauthorized");
    // The address is case-folded like everywhere else: this is the admin, right password.
    let r = login(&app, "Admin@MigraHosting.TEST", &app.admin_password).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn malformed_login_bodies_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let fields = |problem: &Value| -> Vec<String> {
        problem["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e["field"].as_str().expect("field").to_owned())
            .collect()
    };
    let cases = [
        (json!({}), vec!["email", "password"]),
        (json!({ "email": ADMIN }), vec!["password"]),
        (
            json!({ "email": "not an email", "password": "x" }),
            vec!["email"],
        ),
        (json!({ "email": ADMIN, "password": "" }), vec!["password"]),
        (json!({ "email": ADMIN, "password": 12 }), vec!["password"]),
        (json!([ADMIN]), vec!["body"]),
    ];
    for (body, expected) in cases {
        let r = post(&app, "/api/auth/login", &body).await;
        let problem = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), expected, "{body}");
    }
    let r = app
        .http
        .post(format!("{}/api/auth/login", app.url))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .expect("request");
    let problem = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&problem), vec!["body"]);
}

#[tokio::test]
async fn forged_expired_and_misaddressed_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let session = admin_session(&app).await;
    let genuine = claims_of(&access(&session));
    let secret = app.jwt_secret.as_str();
    let changed = |key: &str, value: Value| {
        let mut c = genuine.clone();
        c[key] = value;
        c
    };

    // The forging path itself works: our claims re-signed with the real secret are accepted.
    let control = sign(Algorithm::HS256, secret, &genuine);
    assert_eq!(me(&app, &control).await.status(), StatusCode::OK);

    let payload = b64(genuine.to_string().as_bytes());
    let mut promoted = genuine.clone();
    promoted["role"] = json!("super_admin");
    promoted.as_object_mut().expect("object").remove("tid");
    let good_signature = access(&session)
        .rsplit('.')
        .next()
        .expect("signature")
        .to_owned();
    let mut expired = changed("exp", json!(now() - 120));
    expired["iat"] = json!(now() - 1000);
    expired["nbf"] = json!(now() - 1000);

    let forged = [
        ("expired", sign(Algorithm::HS256, secret, &expired)),
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
        ),
        (
            "alg none with the genuine signature",
            format!(
                "{}.{payload}.{good_signature}",
                b64(br#"{"alg":"none","typ":"JWT"}"#)
            ),
        ),
        (
            "HS512, right secret",
            sign(Algorithm::HS512, secret, &genuine),
        ),
        (
            "HS384, right secret",
            sign(Algorithm::HS384, secret, &genuine),
        ),
        (
            "RS256 header",
            with_header(&json!({"alg": "RS256", "typ": "JWT"}), &genuine, secret),
        ),
        (
            "ES256 header",
            with_header(&json!({"alg": "ES256", "typ": "JWT"}), &genuine, secret),
        ),
        (
            "wrong secret",
            sign(
                Algorithm::HS256,
                "a-different-secret-that-is-long-enough",
                &genuine,
            ),
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{good_signature}",
                access(&session).split('.').next().expect("header"),
                b64(promoted.to_string().as_bytes())
            ),
        ),
        (
            "wrong issuer",
            sign(Algorithm::HS256, secret, &changed("iss", json!("evil"))),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::HS256,
                secret,
                &changed("aud", json!("mpanel-admin")),
            ),
        ),
        (
            "nbf in the future",
            sign(
                Algorithm::HS256,
                secret,
                &changed("nbf", json!(now() + 120)),
            ),
        ),
        (
            "no exp",
            sign(Algorithm::HS256, secret, &{
                let mut c = genuine.clone();
                c.as_object_mut().expect("object").remove("exp");
                c
            }),
        ),
        (
            "another user's id",
            sign(
                Algorithm::HS256,
                secret,
                &changed("sub", json!(Uuid::new_v4())),
            ),
        ),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    let mut bodies = Vec::new();
    for (what, token) in &forged {
        let r = me(&app, token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        bodies.push(assert_problem(r, StatusCode::UNAUTHORIZED).await);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "one answer whatever the reason"
    );
    // The genuine token still works afterwards.
    assert_eq!(me(&app, &access(&session)).await.status(), StatusCode::OK);
    reliability::attack(
        "JWT forgeries: alg none, HS/RS/ES algorithm confusion, wrong key, tampered payload, wrong issuer or audience, expired, nbf in the future, no exp, another user's id: one identical 401",
        file!(),
        "forged_expired_and_misaddressed_tokens_are_refused",
        forged.len(),
    );
}

#[tokio::test]
async fn refresh_rotates_and_reusing_a_rotated_token_revokes_the_family() {
    let app = TestApp::spawn().await;
    let first = admin_session(&app).await;
    let r0 = refresh_token(&first);

    let r = refresh(&app, &r0).await;
    assert_eq!(r.status(), StatusCode::OK);
    let second: Value = r.json().await.expect("JSON");
    let r1 = refresh_token(&second);
    assert_ne!(r0, r1);
    assert_eq!(second["user"], first["user"]);
    assert_eq!(me(&app, &access(&second)).await.status(), StatusCode::OK);

    let r = refresh(&app, &r1).await;
    assert_eq!(r.status(), StatusCode::OK);
    let third: Value = r.json().await.expect("JSON");
    let r2 = refresh_token(&third);

    // r0 was rotated: presenting it again is reuse. It is refused, and the whole family dies,
    // including the newest refresh token and the session's access tokens.
    assert_problem(refresh(&app, &r0).await, StatusCode::UNAUTHORIZED).await;
    assert_problem(refresh(&app, &r2).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        me(&app, &access(&third)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (total, revoked): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(revoked_at) FROM refresh_tokens")
            .fetch_one(&app.pool)
            .await
            .expect("query");
    assert_eq!((total, revoked), (3, 3));

    // Another session of the same user is untouched.
    let other = admin_session(&app).await;
    assert_eq!(
        refresh(&app, &refresh_token(&other)).await.status(),
        StatusCode::OK
    );
    reliability::attack(
        "Refresh token reused after rotation: refused, and the whole token family revoked",
        file!(),
        "refresh_rotates_and_reusing_a_rotated_token_revokes_the_family",
        2,
    );
}

#[tokio::test]
async fn expired_unknown_and_malformed_refresh_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let session = admin_session(&app).await;
    sqlx::query(
        "UPDATE refresh_tokens SET issued_at = now() - interval '8 days', \
         expires_at = now() - interval '1 day'",
    )
    .execute(&app.pool)
    .await
    .expect("age the token");
    assert_problem(
        refresh(&app, &refresh_token(&session)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_problem(
        refresh(&app, &"ab".repeat(32)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_problem(refresh(&app, "short").await, StatusCode::UNAUTHORIZED).await;
    let problem = assert_problem(
        post(&app, "/api/auth/refresh", &json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "refreshToken");
    reliability::attack(
        "Refresh tokens expired, unknown, malformed or missing: 401/422",
        file!(),
        "expired_unknown_and_malformed_refresh_tokens_are_refused",
        4,
    );
}

#[tokio::test]
async fn of_two_concurrent_refreshes_of_one_token_exactly_one_succeeds() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        let token = refresh_token(&admin_session(&app).await);
        let (a, b) = tokio::join!(refresh(&app, &token), refresh(&app, &token));
        let mut statuses = [a.status(), b.status()];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::UNAUTHORIZED]);
    }
    let successors: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE replaced_by IS NOT NULL")
            .fetch_one(&app.pool)
            .await
            .expect("query");
    assert_eq!(successors, 5, "each token was rotated exactly once");
}

#[tokio::test]
async fn logout_revokes_one_session_or_all_of_them() {
    let app = TestApp::spawn().await;
    let one = admin_session(&app).await;
    let two = admin_session(&app).await;

    let r = app
        .http
        .post(format!("{}/api/auth/logout", app.url))
        .bearer_auth(access(&one))
        .json(&json!({ "refreshToken": refresh_token(&one) }))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_problem(
        refresh(&app, &refresh_token(&one)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        me(&app, &access(&one)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(me(&app, &access(&two)).await.status(), StatusCode::OK);

    // Without a body: every session of the user ends.
    let three = admin_session(&app).await;
    let r = app
        .http
        .post(format!("{}/api/auth/logout", app.url))
        .bearer_auth(access(&three))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for s in [&two, &three] {
        assert_problem(
            refresh(&app, &refresh_token(s)).await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }

    // Logout needs a token.
    let r = app
        .http
        .post(format!("{}/api/auth/logout", app.url))
        .send()
        .await
        .expect("request");
    assert_problem(r, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn users_are_created_hashed_and_lose_access_when_deleted_or_changed() {
    let app = TestApp::spawn().await;
    let tenant = tenant_id(&app).await;
    let email = Email::parse("support@migrahosting.test").expect("email");
    let password = SecretString::from("a long enough passphrase");
    let id = create_user(&app.pool, Some(tenant), &email, Role::Support, &password)
        .await
        .expect("created");
    let dup = create_user(&app.pool, Some(tenant), &email, Role::Admin, &password).await;
    assert!(
        matches!(dup, Err(CreateUserError::DuplicateEmail)),
        "{dup:?}"
    );
    let other = Email::parse("other@migrahosting.test").expect("email");
    let short = create_user(
        &app.pool,
        Some(tenant),
        &other,
        Role::Admin,
        &SecretString::from("too short"),
    )
    .await;
    assert!(matches!(short, Err(CreateUserError::PasswordTooShort)));
    let root_with_tenant =
        create_user(&app.pool, Some(tenant), &other, Role::SuperAdmin, &password).await;
    assert!(matches!(
        root_with_tenant,
        Err(CreateUserError::TenantMismatch)
    ));
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("user");
    assert!(hash.starts_with("$argon2id$"));

    let session = session_of(&app, email.as_str(), "a long enough passphrase").await;
    assert_eq!(session["user"]["role"], "support");
    assert_eq!(me(&app, &access(&session)).await.status(), StatusCode::OK);

    // A role change invalidates tokens issued under the old role.
    sqlx::query("UPDATE users SET role = 'auditor' WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .expect("demote");
    assert_eq!(
        me(&app, &access(&session)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let session = session_of(&app, email.as_str(), "a long enough passphrase").await;
    assert_eq!(session["user"]["role"], "auditor");

    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .expect("delete");
    assert_problem(me(&app, &access(&session)).await, StatusCode::UNAUTHORIZED).await;
    assert_problem(
        refresh(&app, &refresh_token(&session)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_problem(
        login(&app, email.as_str(), "a long enough passphrase").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    reliability::attack(
        "Tokens and credentials of a deleted user: access, refresh and login refused",
        file!(),
        "users_are_created_hashed_and_lose_access_when_deleted_or_changed",
        3,
    );
}

#[tokio::test]
async fn no_password_token_or_secret_reaches_the_log() {
    let app = TestApp::spawn().await;
    let wrong_password = "wrong-password-that-must-not-be-logged";
    let _ = login(&app, ADMIN, wrong_password).await;
    let _ = login(&app, "ghost@migrahosting.test", wrong_password).await;
    let first = admin_session(&app).await;
    let r = refresh(&app, &refresh_token(&first)).await;
    let second: Value = r.json().await.expect("JSON");
    let _ = refresh(&app, &refresh_token(&first)).await; // reuse: logged as a warning
    let expired = sign(
        Algorithm::HS256,
        &app.jwt_secret,
        &json!({ "sub": Uuid::new_v4(), "exp": now() - 100 }),
    );
    let _ = me(&app, &expired).await;
    let _ = me(&app, &access(&first)).await;
    let _ = app
        .http
        .post(format!("{}/api/auth/logout", app.url))
        .bearer_auth(access(&second))
        .send()
        .await;

    let log = app
        .eventually(5, "the reuse warning in the log", || async {
            let log = app.log();
            log.contains("reuse").then_some(log)
        })
        .await;
    let secrets = [
        ("admin password", app.admin_password.clone()),
        ("wrong password", wrong_password.to_owned()),
        ("JWT secret", app.jwt_secret.clone()),
        ("first access token", access(&first)),
        ("first refresh token", refresh_token(&first)),
        ("second access token", access(&second)),
        ("second refresh token", refresh_token(&second)),
        ("forged token", expired),
    ];
    for (what, secret) in secrets {
        assert!(!log.contains(&secret), "the log contains the {what}");
    }
    // Partial leaks count too: no JWT signature segment either.
    let signature = access(&first).rsplit('.').next().expect("sig").to_owned();
    assert!(!log.contains(&signature));
    reliability::attack(
        "Secrets in the log: no password, token or signing secret reaches the server's log across logins, refreshes and failures",
        file!(),
        "no_password_token_or_secret_reaches_the_log",
        1,
    );
}
