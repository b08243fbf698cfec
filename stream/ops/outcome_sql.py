"""The SQL of `clickscore outcomes` (PostgreSQL). Parameters: :now (the job's clock, in event
time), :churn_horizon and :purchase_horizon (intervals), :since and :until (dates).

Definitions (docs/monitoring.md):
- a churn alert's outcome is `stayed_away` once event time passes alert + horizon with no
  event of the user after the alert (the worker writes `returned` when one comes);
- precision of a day's alerts = stayed_away / known outcomes; treated alerts (a retention
  action recorded for them, `clickscore actions`) are counted apart;
- a churner is a user whose newest event (user_scores.last_event_at) is a horizon or more
  before now; they were caught if a churn alert came at or after that event; recall of a day =
  caught / churners whose last event was that day, split by whether the alert that caught
  them was treated (the gauge adds both groups); every user counts, as in the version's
  validation;
- a purchase-intent prediction is decided once a purchase came within the horizon or the
  horizon has passed; calibration = purchases / predictions per score decile.
"""

from __future__ import annotations

from sqlalchemy import text

CLOCK = text("SELECT max(last_event_at + silence_ms * interval '1 millisecond') FROM user_scores")

CLOSE_CHURN = text(
    """
    INSERT INTO churn_outcomes (user_id, alert_at, outcome, known_at, returned_at, source)
    SELECT a.user_id, a.event_at, 'stayed_away', a.event_at + CAST(:churn_horizon AS interval),
        NULL, 'job'
    FROM alerts a
    WHERE a.kind = 'churn'
        AND a.event_at + CAST(:churn_horizon AS interval) <= CAST(:now AS timestamptz)
    ON CONFLICT (user_id, alert_at) DO NOTHING
    """
)

_TREATED_ALERT = "EXISTS (SELECT 1 FROM retention_actions r WHERE r.alert_id = a.alert_id)"

CHURN_DAILY = text(
    f"""
    INSERT INTO churn_quality_daily (model_version, day, treated, alerts, known, stayed_away,
        returned, precision, churners, caught, recall, computed_at)
    WITH alerted AS (
        SELECT a.model_version, (a.event_at AT TIME ZONE 'UTC')::date AS day,
            {_TREATED_ALERT} AS treated, o.outcome
        FROM alerts a
        LEFT JOIN churn_outcomes o ON o.user_id = a.user_id AND o.alert_at = a.event_at
        WHERE a.kind = 'churn'
    ), by_alert_day AS (
        SELECT model_version, day, treated, count(*) AS alerts, count(outcome) AS known,
            count(*) FILTER (WHERE outcome = 'stayed_away') AS stayed_away,
            count(*) FILTER (WHERE outcome = 'returned') AS returned
        FROM alerted GROUP BY 1, 2, 3
    ), stopped AS (
        SELECT s.model_version, (s.last_event_at AT TIME ZONE 'UTC')::date AS day,
            c.treated IS NOT NULL AS caught, coalesce(c.treated, false) AS treated
        FROM user_scores s
        LEFT JOIN LATERAL (
            SELECT {_TREATED_ALERT} AS treated
            FROM alerts a
            WHERE a.user_id = s.user_id AND a.kind = 'churn' AND a.event_at >= s.last_event_at
            ORDER BY a.event_at LIMIT 1
        ) c ON true
        WHERE s.last_event_at + CAST(:churn_horizon AS interval) <= CAST(:now AS timestamptz)
    ), by_last_day AS (
        SELECT model_version, day, treated, count(*) AS churners,
            count(*) FILTER (WHERE caught) AS caught
        FROM stopped GROUP BY 1, 2, 3
    )
    SELECT coalesce(p.model_version, r.model_version), coalesce(p.day, r.day),
        coalesce(p.treated, r.treated), coalesce(p.alerts, 0), coalesce(p.known, 0),
        coalesce(p.stayed_away, 0), coalesce(p.returned, 0),
        CASE WHEN p.known > 0 THEN p.stayed_away::float / p.known END,
        coalesce(r.churners, 0), coalesce(r.caught, 0),
        CASE WHEN r.churners > 0 THEN r.caught::float / r.churners END,
        now()
    FROM by_alert_day p
    FULL OUTER JOIN by_last_day r
        ON p.model_version = r.model_version AND p.day = r.day AND p.treated = r.treated
    """
)

PURCHASE_DAILY = text(
    """
    INSERT INTO purchase_calibration_daily (model_version, day, treated, decile, predictions,
        purchases, mean_score, purchase_rate, computed_at)
    SELECT p.model_version, p.day,
        EXISTS (
            SELECT 1 FROM retention_actions r JOIN alerts a ON a.alert_id = r.alert_id
            WHERE a.user_id = p.user_id
                AND a.event_at > p.scored_at - CAST(:purchase_horizon AS interval)
                AND a.event_at <= p.scored_at + CAST(:purchase_horizon AS interval)
        ) AS treated,
        least(9, greatest(0, floor(p.purchase_intent * 10)))::int AS decile,
        count(*), count(p.purchased_at), avg(p.purchase_intent),
        count(p.purchased_at)::float / count(*), now()
    FROM purchase_predictions p
    WHERE p.purchased_at IS NOT NULL
        OR p.scored_at + CAST(:purchase_horizon AS interval) <= CAST(:now AS timestamptz)
    GROUP BY 1, 2, 3, 4
    """
)

# What the gauges show: the days whose outcomes are all decided by now (:until is the date of
# now - horizon, excluded) and the window_days before it.
CHURN_WINDOW = text(
    """
    SELECT model_version, treated, sum(known) AS known, sum(stayed_away) AS stayed_away,
        sum(churners) AS churners, sum(caught) AS caught
    FROM churn_quality_daily
    WHERE day >= CAST(:since AS date) AND day < CAST(:until AS date)
    GROUP BY 1, 2
    """
)

CALIBRATION_WINDOW = text(
    """
    SELECT model_version, decile, sum(predictions) AS predictions, sum(purchases) AS purchases,
        sum(mean_score * predictions) / sum(predictions) AS mean_score
    FROM purchase_calibration_daily
    WHERE NOT treated AND day >= CAST(:since AS date) AND day < CAST(:until AS date)
    GROUP BY 1, 2
    """
)

LAST_RECORDED = text("SELECT extract(epoch FROM max(recorded_at)) FROM churn_outcomes")
