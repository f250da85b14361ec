"""Operations: rejected data you can see (and the CLI replays), maintenance steps, the on-call status view."""
