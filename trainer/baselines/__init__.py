"""What a shop would use without clickscore: BG/NBD, popularity and session kNN."""
