"""RL: pure losses and KL estimators (:mod:`.losses`) and the optimisation loop (:mod:`.loop`)."""
