//! dns provisioner (being written).
