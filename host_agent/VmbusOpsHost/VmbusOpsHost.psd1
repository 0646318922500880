@{
    # The module that carries the vmbusops role capability (RoleCapabilities\VmbusOpsHost.psrc).
    ModuleVersion = '1.0.0'
    GUID = 'c3f0a7d4-2a55-4c1e-8f5e-0d6b1e9a4f21'
    Author = 'vmbusops'
    Description = 'JEA role capability for the vmbusops agent'
    PowerShellVersion = '5.1'
}
