package ha

// StopKeepAlive stops renewing the lock's lease without revoking it, as if
// the holder had died: etcd frees the lock when the TTL runs out.
func (l *Lock) StopKeepAlive() { l.stopKA() }
