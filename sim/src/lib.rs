//! Seeded discrete-event swarm simulator (being built).
