"""fastrm_core: adapters, gradient relevancy baseline, FastRM proxy, per-token capture, distillation."""
