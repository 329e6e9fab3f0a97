"""A VM's world on its host: the VMX, virtual SCSI and the VM's files."""
