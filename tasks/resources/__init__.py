"""Host resources bootstrap converges: each plans its change from config + facts."""
