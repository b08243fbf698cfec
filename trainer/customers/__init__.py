"""Customer-level churn and purchase scoring on real data: protocols, BG/NBD, the scorecard
that `clickscore evaluate churn|purchase` prints."""
