//! The outbound lifecycle's one write mechanism (`shared::delivery`), walked over every state:
//! each transition's function, applied to a real message in each outbound state, moves it
//! exactly when `delivery::allows` says so, and leaves it untouched otherwise.

use harness::pg;
use shared::{
    delivery::{self, CallbackMove, OUTBOUND, Transition, allows},
    twilio::status::DeliveryStatus::{self, *},
};
use uuid::Uuid;

/// A message in `status`, as a transition would find it: no attempt made and no SID before
/// Twilio has it; one attempt (and a SID once at Twilio) after.
async fn message(pool: &sqlx::PgPool, status: DeliveryStatus) -> Uuid {
    let at_twilio = status.at_twilio() && status != Canceled;
    let attempts = i32::from(at_twilio || status == Submitting);
    let sid = at_twilio.then(|| format!("SM{}", Uuid::new_v4().simple()));
    sqlx::query_scalar(
        "INSERT INTO sms_messages (direction, message_content, delivery_status, to_number, send_attempts, twilio_sid)
         VALUES ('outbound', 'hello', $1, '+14155550101', $2, $3) RETURNING id",
    )
    .bind(status.as_str())
    .bind(attempts)
    .bind(sid)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn status_of(pool: &sqlx::PgPool, id: Uuid) -> DeliveryStatus {
    let s: String = sqlx::query_scalar("SELECT delivery_status FROM sms_messages WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    s.parse().unwrap()
}

#[tokio::test]
async fn every_transition_from_every_state_moves_exactly_when_allowed() {
    let db = pg::fresh_db().await;
    let pool = &db.pool;
    let mut walked = 0;
    for from in OUTBOUND {
        // (transition, the status it aims at, the write)
        for transition in Transition::ALL {
            let targets: Vec<DeliveryStatus> = match transition {
                Transition::Create => continue, // the INSERT of `outbound::create`, tested there
                Transition::Callback => OUTBOUND.to_vec(),
                t => OUTBOUND.into_iter().filter(|s| t.leads_to(*s)).collect(),
            };
            for to in targets {
                let id = message(pool, from).await;
                let mut conn = pool.acquire().await.unwrap();
                let seen_attempts = if from == Submitting { 1 } else { 0 };
                match transition {
                    Transition::Claim => {
                        delivery::claim(&mut conn, id, seen_attempts + 1, seen_attempts)
                            .await
                            .unwrap();
                    }
                    Transition::Accept => {
                        let sid = format!("SM{}", Uuid::new_v4().simple());
                        delivery::accept(&mut conn, id, 1, &sid, to).await.unwrap();
                    }
                    Transition::RetryLater => {
                        delivery::retry_later(&mut conn, id).await.unwrap();
                    }
                    Transition::Fail => {
                        delivery::fail(&mut conn, id, Some("30007"), Some("filtered"))
                            .await
                            .unwrap();
                    }
                    Transition::Cancel => {
                        delivery::cancel(&mut conn, id).await.unwrap();
                    }
                    Transition::Callback => {
                        let moves = [CallbackMove {
                            message_id: id,
                            from,
                            to,
                            error_code: None,
                        }];
                        delivery::apply_callbacks(&mut conn, &moves).await.unwrap();
                    }
                    Transition::Create => unreachable!(),
                }
                let after = status_of(pool, id).await;
                // Accept keeps a status a callback already moved past submitting; the SID is
                // still recorded. A claim or cancel needs the message not at Twilio (no SID),
                // which `message` gives every state before the hand-over.
                let expected = if allows(transition, from, to) {
                    to
                } else {
                    from
                };
                assert_eq!(
                    after, expected,
                    "{transition:?} from {from} towards {to}: now {after}"
                );
                walked += 1;
            }
        }
    }
    println!("{walked} (state, transition, target) cases walked");
    assert!(walked > 13 * 6);
}

/// A cancel answers from the same rule the write obeys.
#[tokio::test]
async fn a_refused_cancel_changes_nothing() {
    let db = pg::fresh_db().await;
    for status in [Submitting, Queued, Sent, Delivered, Failed, Canceled] {
        let id = message(&db.pool, status).await;
        let mut conn = db.pool.acquire().await.unwrap();
        assert!(!delivery::cancel(&mut conn, id).await.unwrap(), "{status}");
        assert_eq!(status_of(&db.pool, id).await, status);
    }
}
