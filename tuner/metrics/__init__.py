"""What an edit did, measured: CounterFact's efficacy, paraphrase and specificity
(``counterfact``), the v* trajectory's stability (``stability``), generation entropy and the
disabling-edit rule (``fluency``), many rank-one edits scored in one batch (``row_updates``), and
how a setting is scored over facts — the objective's value and its feasibility (``scoring``)."""
