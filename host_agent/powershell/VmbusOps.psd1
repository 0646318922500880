@{
    RootModule        = 'VmbusOps.psm1'
    ModuleVersion     = '0.1.0'
    GUID              = '6f1d3c2e-8a57-4b0e-9d3f-2c7a1b5e9f40'
    Author            = 'vmbusops'
    CompanyName       = 'vmbusops'
    Copyright         = '(c) vmbusops contributors. MIT License.'
    Description       = 'Submit signed job bundles to a vmbusops host agent and follow them from runbooks.'
    PowerShellVersion = '5.1'
    CompatiblePSEditions = @('Desktop', 'Core')
    FunctionsToExport = @('Submit-VmbusOpsJob', 'Get-VmbusOpsJob', 'Wait-VmbusOpsJob', 'Receive-VmbusOpsJobOutput', 'Stop-VmbusOpsJob',
        'Resume-VmbusOpsJob')
    CmdletsToExport   = @()
    VariablesToExport = @()
    AliasesToExport   = @()
    PrivateData       = @{
        PSData = @{
            Tags       = @('Hyper-V', 'PowerShellDirect', 'VMBus', 'Runbook')
            LicenseUri = 'https://opensource.org/licenses/MIT'
        }
    }
}
