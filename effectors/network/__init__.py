"""Network effector: an engine Network realised on one host as an isolated
libvirt network on a Linux bridge, with VXLAN as its only way off the host."""
