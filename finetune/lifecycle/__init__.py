"""After training: use a run (generate, chat), fold its adapter into the base (merge), publish it."""
