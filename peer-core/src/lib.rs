//! Sans-IO peer core (being built).
