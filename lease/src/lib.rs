//! Raft-replicated lease store: the single source of truth for which region may run the writable
//! primary of each protected pair, and the fencing epoch every side effect carries.
