<#
    The JEA endpoint (host_agent/VmbusOps.pssc and the VmbusOpsHost role) judged by PowerShell
    itself: the files as PowerShell reads them, a real JEA runspace that PowerShell 7 builds from
    them ([initialsessionstate]::CreateFromSessionConfigurationFile: NoLanguage, proxies for the
    restricted cmdlets, the role's functions), and the role's functions run for real.

    What Linux cannot show: WinRM registration, the virtual account and its groups, transcripts,
    the real Hyper-V cmdlets (a stand-in module of the same names and parameter types takes their
    place: tests/powershell/HyperVStandIn), C:\ paths, and Windows PowerShell 5.1's own JEA.
#>

BeforeAll {
    $repo = (Resolve-Path (Join-Path $PSScriptRoot '../..')).ProviderPath
    $pssc = Join-Path $repo 'host_agent/VmbusOps.pssc'
    $psrc = Join-Path $repo 'host_agent/VmbusOpsHost/RoleCapabilities/VmbusOpsHost.psrc'
    $invokerPath = Join-Path $repo 'src/vmbusops/guestops/powershell/Invoke-VmbusOpsGuest.ps1'

    # As JEA reads a configuration file (DISCUtils.LoadConfigFile): the file's script, invoked, so
    # a ScriptBlock value is the literal's body without its braces.
    function Read-JeaConfigFile([string] $Path) {
        [scriptblock]::Create([System.IO.File]::ReadAllText($Path)).InvokeReturnAsIs()
    }
    # The key names New-PSSessionConfigurationFile / New-PSRoleCapabilityFile write, commented
    # out or not.
    function Get-GeneratedKey([string] $Path) {
        Select-String -LiteralPath $Path -Pattern '^\s*#?\s*([A-Za-z]+)\s*=' | ForEach-Object { $_.Matches[0].Groups[1].Value }
    }
    $session = Read-JeaConfigFile $pssc
    $role = Read-JeaConfigFile $psrc
}

Describe 'The session configuration file' {
    It 'loads as PowerShell data' {
        $data = Import-PowerShellDataFile -LiteralPath $pssc
        $data.SessionType | Should -Be 'RestrictedRemoteServer'
    }

    It 'passes the checks of Test-PSSessionConfigurationFile' {
        # Test-PSSessionConfigurationFile exists only on Windows; its whole check is
        # DISCUtils.VerifyConfigTable, an internal method that PowerShell 7 on Linux also has.
        $verify = [System.Management.Automation.PSObject].Assembly.GetType('System.Management.Automation.Remoting.DISCUtils').
            GetMethod('VerifyConfigTable', [System.Reflection.BindingFlags]'NonPublic, Static')
        $verify | Should -Not -BeNullOrEmpty -Because 'PowerShell still has the check Test-PSSessionConfigurationFile runs'
        function Test-Config { [CmdletBinding()] param([hashtable] $Table) $verify.Invoke($null, [object[]]@($Table, $PSCmdlet, [string]$pssc)) }
        Test-Config -Table $session | Should -BeTrue
        Test-Config -Table (@{ SchemaVersion = '2.0.0.0'; SessionTyp = 'RestrictedRemoteServer' }) | Should -BeFalse
    }

    It 'uses only keys New-PSSessionConfigurationFile knows' {
        New-PSSessionConfigurationFile -Path (Join-Path $TestDrive 'generated.pssc') -Full
        $known = Get-GeneratedKey (Join-Path $TestDrive 'generated.pssc')
        $known | Should -Contain 'RunAsVirtualAccountGroups'
        foreach ($key in $session.Keys) { $key | Should -BeIn $known }
    }

    It 'is a NoLanguage JEA session whose one role is VmbusOpsHost' {
        $session.SessionType | Should -Be 'RestrictedRemoteServer'
        $session.Keys | Should -Not -Contain 'LanguageMode'
        @($session.RoleDefinitions.Values.RoleCapabilities | Select-Object -Unique) | Should -Be @('VmbusOpsHost')
    }
}

Describe 'The role capability file' {
    It 'loads as PowerShell data' {
        (Import-PowerShellDataFile -LiteralPath $psrc).VisibleFunctions | Should -Contain 'Invoke-VmbusOpsGuest'
    }

    It 'uses only keys New-PSRoleCapabilityFile knows' {
        New-PSRoleCapabilityFile -Path (Join-Path $TestDrive 'generated.psrc')
        $known = Get-GeneratedKey (Join-Path $TestDrive 'generated.psrc')
        $known | Should -Contain 'FunctionDefinitions'
        foreach ($key in $role.Keys) { $key | Should -BeIn $known }
    }

    It 'restricts every visible cmdlet to named parameters, with valid sets and patterns' {
        foreach ($entry in $role.VisibleCmdlets) {
            $entry | Should -BeOfType [hashtable]
            $entry.Name | Should -Not -Match '\\' -Because 'JEA names a proxy exactly as written'
            foreach ($parameter in @($entry.Parameters)) {
                $parameter.Keys | ForEach-Object { $_ | Should -BeIn 'Name', 'ValidateSet', 'ValidatePattern' }
                if ($parameter.ContainsKey('ValidatePattern')) {
                    # JEA wraps a pattern as ^(pattern)$ (InitialSessionState.ProcessCommandModification).
                    { [regex]::new('^(' + $parameter.ValidatePattern + ')$') } | Should -Not -Throw
                }
            }
        }
    }

    It 'makes visible exactly the functions it defines, each with a param block, and Get-Volume restricted' {
        $defined = $role.FunctionDefinitions | ForEach-Object { $_.Name }
        @($role.VisibleFunctions | Where-Object { $_ -is [string] }) | Sort-Object | Should -Be ($defined | Sort-Object)
        # A module's function (Storage's Get-Volume is CDXML, not a cmdlet) is restricted as a cmdlet is.
        $modular = @($role.VisibleFunctions | Where-Object { $_ -isnot [string] })
        $modular.Name | Should -Be @('Get-Volume')
        $modular[0].Parameters.Name | Should -Be @('FilePath')
        foreach ($definition in $role.FunctionDefinitions) {
            $definition.ScriptBlock | Should -BeOfType [scriptblock]
            $definition.ScriptBlock.Ast.ParamBlock | Should -Not -BeNullOrEmpty -Because $definition.Name
        }
    }

    It 'defines Invoke-VmbusOpsGuest as the agent''s invoker script, byte for byte' {
        $body = ($role.FunctionDefinitions | Where-Object Name -EQ 'Invoke-VmbusOpsGuest').ScriptBlock.ToString()
        $file = [System.IO.File]::ReadAllText($invokerPath)
        ($body -replace "`r`n", "`n") | Should -BeExactly ($file -replace "`r`n", "`n")
    }
}

Describe 'A JEA runspace built from the shipped files' {
    BeforeAll {
        $savedModulePath = $env:PSModulePath
        $env:PSModulePath = (Join-Path $PSScriptRoot 'HyperVStandIn') + [System.IO.Path]::PathSeparator +
            (Join-Path $repo 'host_agent') + [System.IO.Path]::PathSeparator + $env:PSModulePath
        $calls = [System.Collections.Generic.List[object]]::new()
        [System.AppDomain]::CurrentDomain.SetData('VmbusOps.HyperVCalls', $calls)
        # Every user is in every group: the role mapping is the pssc's, the membership check is not.
        $iss = [initialsessionstate]::CreateFromSessionConfigurationFile($pssc, [Func[string, bool]] { param($group) $true })
        $jea = [runspacefactory]::CreateRunspace($iss)
        $jea.Open()

        # A command as a PSRP client sends it: name and parameters, never script.
        function Invoke-InJea {
            param([string] $Command, [hashtable] $Parameters = @{}, [switch] $Script)
            $ps = [powershell]::Create()
            $ps.Runspace = $jea
            try {
                if ($Script) { $null = $ps.AddScript($Command) } else { $null = $ps.AddCommand($Command) }
                foreach ($k in $Parameters.Keys) { $null = $ps.AddParameter($k, $Parameters[$k]) }
                $output = $ps.Invoke()
                [pscustomobject]@{ Output = $output; Errors = @($ps.Streams.Error); Thrown = $null }
            } catch {
                $inner = $_.Exception
                while ($inner.InnerException -and $inner -is [System.Management.Automation.MethodInvocationException]) { $inner = $inner.InnerException }
                [pscustomobject]@{ Output = @(); Errors = @($ps.Streams.Error); Thrown = $inner }
            } finally {
                $ps.Dispose()
            }
        }
        $credential = [pscredential]::new('guest\Administrator', (ConvertTo-SecureString -String ([guid]::NewGuid()) -AsPlainText -Force))
    }

    AfterAll {
        if ($jea) { $jea.Dispose() }
        [System.AppDomain]::CurrentDomain.SetData('VmbusOps.HyperVCalls', $null)
        $env:PSModulePath = $savedModulePath
    }

    BeforeEach { $calls.Clear() }

    It 'is in NoLanguage mode and refuses script' {
        $iss.LanguageMode | Should -Be 'NoLanguage'
        (Invoke-InJea '1 + 1' -Script).Thrown.Message | Should -BeLike '*no-language mode*'
    }

    It 'offers the role''s commands by the names the agent sends, and JEA''s defaults, nothing else' {
        $names = (Invoke-InJea 'Get-Command').Output.Name
        $roleNames = @($role.VisibleCmdlets.Name) + @($role.VisibleFunctions | ForEach-Object { if ($_ -is [string]) { $_ } else { $_.Name } })
        $defaults = 'Clear-Host', 'Exit-PSSession', 'Get-Command', 'Get-FormatData', 'Get-Help', 'Measure-Object', 'Out-Default', 'Select-Object'
        $names | Sort-Object | Should -Be (($roleNames + $defaults) | Sort-Object)
    }

    It 'binds what the agent sends to <Command>' -ForEach @(
        @{ Command = 'Get-VM'; Parameters = @{ Name = 'web01' } }
        @{ Command = 'Get-VMIntegrationService'; Parameters = @{ VMName = 'web01'; Name = 'Guest Service Interface' } }
        @{ Command = 'Get-VMGroup'; Parameters = @{ Name = '*' } }
        @{ Command = 'Enable-VMIntegrationService'; Parameters = @{ VMName = 'web01'; Name = 'Guest Service Interface' } }
        @{ Command = 'Copy-VMFile'; Parameters = @{ Name = 'web01'; SourcePath = 'C:\ProgramData\vmbusops\staging\job-7-ab12\motd.txt'
                DestinationPath = 'C:\ProgramData\vmbusops\motd.txt'; FileSource = 'Host'; CreateFullPath = $true; Force = $true } }
        @{ Command = 'Restart-VM'; Parameters = @{ Name = 'web01'; Force = $true } }
        @{ Command = 'Start-VM'; Parameters = @{ Name = 'web01' } }
        @{ Command = 'Stop-VM'; Parameters = @{ Name = 'web01'; Force = $true; TurnOff = $true } }
        @{ Command = 'Checkpoint-VM'; Parameters = @{ Name = 'web01'; SnapshotName = 'vmbusops-job-7-step-2'; Passthru = $true } }
        @{ Command = 'Get-VMSnapshot'; Parameters = @{ VMName = 'web01' } }
        @{ Command = 'Get-VMSnapshot'; Parameters = @{ VMName = 'web01'; Name = 'vmbusops-job-7-step-2' } }
        @{ Command = 'Restore-VMSnapshot'; Parameters = @{ VMName = 'web01'; Name = 'vmbusops-job-7-step-2'; Confirm = $false } }
        @{ Command = 'Remove-VMSnapshot'; Parameters = @{ VMName = 'web01'; Name = 'vmbusops-job-7-step-2'; Confirm = $false } }
        @{ Command = 'Get-VMHardDiskDrive'; Parameters = @{ VMName = 'web01' } }
        @{ Command = 'Get-Volume'; Parameters = @{ FilePath = 'C:\Hyper-V\web01\Virtual Hard Disks\web01.vhdx' } }
    ) {
        $result = Invoke-InJea $Command $Parameters
        $result.Thrown | Should -BeNullOrEmpty
        $result.Errors | Should -BeNullOrEmpty
        $calls.Count | Should -Be 1
        $calls[0].Command | Should -Be $Command
        @($calls[0].Bound.Keys) | Sort-Object | Should -Be (@($Parameters.Keys) | Sort-Object)
    }

    It 'refuses <Why>' -ForEach @(
        @{ Why = 'a source outside the staging root'; Command = 'Copy-VMFile'; Error = 'ParameterArgumentValidationError*'
            Parameters = @{ Name = 'web01'; SourcePath = 'C:\Windows\System32\config\SAM'; DestinationPath = 'C:\x'; FileSource = 'Host' } }
        @{ Why = 'a staged path that climbs out with ..'; Command = 'Copy-VMFile'; Error = 'ParameterArgumentValidationError*'
            Parameters = @{ Name = 'web01'; SourcePath = 'C:\ProgramData\vmbusops\staging\job-1\..\..\secret.txt'; DestinationPath = 'C:\x'; FileSource = 'Host' } }
        @{ Why = 'a copy from the guest'; Command = 'Copy-VMFile'; Error = 'ParameterArgumentValidationError*'
            Parameters = @{ Name = 'web01'; SourcePath = 'C:\ProgramData\vmbusops\staging\job-1\a.txt'; DestinationPath = 'C:\x'; FileSource = 'Guest' } }
        @{ Why = 'Get-VMGroup of one group by name'; Command = 'Get-VMGroup'; Error = 'ParameterArgumentValidationError*'
            Parameters = @{ Name = 'web-tier' } }
        @{ Why = 'Get-VMGroup on another host'; Command = 'Get-VMGroup'; Error = 'NamedParameterNotFound*'
            Parameters = @{ Name = '*'; ComputerName = 'hv2' } }
        @{ Why = 'another integration service'; Command = 'Enable-VMIntegrationService'; Error = 'ParameterArgumentValidationError*'
            Parameters = @{ VMName = 'web01'; Name = 'Heartbeat' } }
        @{ Why = 'Invoke-Command to a computer'; Command = 'Invoke-Command'; Error = 'NamedParameterNotFound*'
            Parameters = @{ ComputerName = 'localhost' } }
        @{ Why = 'a script block sent as text'; Command = 'Invoke-Command'; Error = 'ParameterArgumentTransformationError*'
            Parameters = @{ VMName = 'web01'; Credential = $credential; ScriptBlock = 'Remove-Item C:\ -Recurse' } }
        @{ Why = 'a hash of anything but a staged file'; Command = 'Get-FileHash'; Error = 'ParameterArgumentValidationError*'
            Parameters = @{ LiteralPath = '/etc/hostname'; Algorithm = 'SHA256' } }
        @{ Why = 'another hash algorithm'; Command = 'Get-FileHash'; Error = 'ParameterArgumentValidationError*'
            Parameters = @{ LiteralPath = 'C:\ProgramData\vmbusops\staging\job-1\a.txt'; Algorithm = 'MD5' } }
        @{ Why = 'removing a checkpoint''s children with it'; Command = 'Remove-VMSnapshot'; Error = 'NamedParameterNotFound*'
            Parameters = @{ VMName = 'web01'; Name = 'vmbusops-job-1'; IncludeAllChildSnapshots = $true } }
        @{ Why = 'removing every checkpoint by wildcard'; Command = 'Remove-VMSnapshot'; Error = 'ParameterArgumentValidationError*'
            Parameters = @{ VMName = 'web01'; Name = '*'; Confirm = $false } }
        @{ Why = 'restoring checkpoints by wildcard'; Command = 'Restore-VMSnapshot'; Error = 'ParameterArgumentValidationError*'
            Parameters = @{ VMName = 'web01'; Name = 'vmbusops-*'; Confirm = $false } }
        @{ Why = 'a checkpoint named with a wildcard'; Command = 'Checkpoint-VM'; Error = 'ParameterArgumentValidationError*'
            Parameters = @{ Name = 'web01'; SnapshotName = 'a[1]' } }
        @{ Why = 'a checkpoint on another host'; Command = 'Checkpoint-VM'; Error = 'NamedParameterNotFound*'
            Parameters = @{ Name = 'web01'; SnapshotName = 'a'; ComputerName = 'hv2' } }
        @{ Why = 'Get-Volume of every volume'; Command = 'Get-Volume'; Error = 'NamedParameterNotFound*'
            Parameters = @{ DriveLetter = 'C' } }
        @{ Why = 'an alias of a checkpoint cmdlet'; Command = 'Get-VMCheckpoint'; Error = 'CommandNotFoundException*'
            Parameters = @{ VMName = 'web01' } }
        @{ Why = 'changing the checkpoint type'; Command = 'Set-VM'; Error = 'CommandNotFoundException*'
            Parameters = @{ Name = 'web01'; CheckpointType = 'Disabled' } }
        @{ Why = 'a command the role does not name'; Command = 'Get-ChildItem'; Error = 'CommandNotFoundException*'
            Parameters = @{ Path = '/' } }
        @{ Why = 'a cmdlet by its module-qualified name'; Command = 'Microsoft.PowerShell.Management\Get-ChildItem'; Error = 'CommandNotFoundException*'
            Parameters = @{ Path = '/' } }
    ) {
        $result = Invoke-InJea $Command $Parameters
        $result.Thrown | Should -Not -BeNullOrEmpty
        $id = if ($result.Thrown.PSObject.Properties['ErrorRecord'] -and $result.Thrown.ErrorRecord) { $result.Thrown.ErrorRecord.FullyQualifiedErrorId } else { $result.Thrown.GetType().Name }
        $id | Should -BeLike $Error
        $calls.Count | Should -Be 0
    }

    It 'runs Restore-VMSnapshot only with -Confirm:$false: it asks otherwise, and a remote client cannot answer' {
        $result = Invoke-InJea 'Restore-VMSnapshot' @{ VMName = 'web01'; Name = 'vmbusops-job-1' }
        $calls.Count | Should -Be 0
        $failure = @($result.Errors) + @($result.Thrown) | Where-Object { $_ } | Select-Object -First 1
        # The text the simulator's Restore-VMSnapshot gives too (vmbusops.sim.pserrors.confirmation_needed).
        "$failure" | Should -BeLike '*A command that prompts the user failed because the host program or the command type does not support user interaction. The host was attempting to request confirmation with the following message: Are you sure you want to perform this action?*'
    }

    It 'runs Invoke-VmbusOpsGuest, whose Invoke-Command finds the VM <By> through the role''s Get-VM' -ForEach @(
        @{ By = 'by name'; Target = @{ VMName = 'web01' }; Expected = @{ Name = 'web01' } }
        @{ By = 'by id'; Target = @{ VMId = [guid]'6f1d3c2e-8a57-4b0e-9d3f-2c7a1b5e9f40' }; Expected = @{ Id = [guid]'6f1d3c2e-8a57-4b0e-9d3f-2c7a1b5e9f40' } }
    ) {
        # Invoke-Command -VMName/-VMId runs `Get-VM -Name $args` / `Get-VM -Id $args[0]` in the
        # session (PSRemotingCmdlet.CreateHelpersForSpecifiedVMSession), through the role's proxy.
        $result = Invoke-InJea 'Invoke-VmbusOpsGuest' (@{ Credential = $credential; Script = @('Write-Output 1'); StepIndex = @(0); RunId = 'r1' } + $Target)
        $getVM = @($calls | Where-Object Command -EQ 'Get-VM')
        $getVM.Count | Should -Be 1 -Because "Invoke-Command must reach Get-VM ($($result.Thrown.Message))"
        foreach ($k in $Expected.Keys) { $getVM[0].Bound[$k] | Should -Be $Expected[$k] }
        # Past Get-VM, Linux has no VM to open a PowerShell Direct session to: the error comes
        # from Invoke-Command itself, not from binding or the language mode.
        $failure = @($result.Errors) + @($result.Thrown) | Where-Object { $_ } | Select-Object -First 1
        "$failure" | Should -Not -BeLike '*language mode*'
        "$failure" | Should -Not -BeLike '*parameter*'
    }
}

Describe 'Invoke-VmbusOpsGuest, run for real with Invoke-Command shadowed' {
    BeforeAll {
        $body = ($role.FunctionDefinitions | Where-Object Name -EQ 'Invoke-VmbusOpsGuest').ScriptBlock.ToString()
        Set-Item -Path function:script:Invoke-VmbusOpsGuest -Value ([scriptblock]::Create($body))
        $real = Get-Command -Name 'Microsoft.PowerShell.Core\Invoke-Command' -CommandType Cmdlet
        $credential = [pscredential]::new('guest\Administrator', (ConvertTo-SecureString -String ([guid]::NewGuid()) -AsPlainText -Force))

        # Functions come before cmdlets: this one takes the invoker's call, with the cmdlet's own
        # parameter types (checked below against the cmdlet), and keeps what was bound.
        function Invoke-Command {
            [CmdletBinding(DefaultParameterSetName = 'VMName')]
            param(
                [Parameter(Mandatory, ParameterSetName = 'VMName')] [string[]] $VMName,
                [Parameter(Mandatory, ParameterSetName = 'VMId')] [guid[]] $VMId,
                [Parameter(Mandatory)] [pscredential] $Credential,
                [Parameter(Mandatory)] [scriptblock] $ScriptBlock,
                [object[]] $ArgumentList
            )
            $script:bound = [pscustomobject]@{ Set = $PSCmdlet.ParameterSetName; Parameters = @{} + $PSBoundParameters }
        }
    }

    BeforeEach { $script:bound = $null }

    It 'shadows Invoke-Command with the cmdlet''s parameter types' {
        $shadow = Get-Command -Name Invoke-Command -CommandType Function
        foreach ($name in 'VMName', 'VMId', 'Credential', 'ScriptBlock', 'ArgumentList') {
            $shadow.Parameters[$name].ParameterType | Should -Be $real.Parameters[$name].ParameterType
        }
    }

    It 'gives Invoke-Command a [scriptblock] of fixed text, and the user''s steps only as -ArgumentList data' {
        $marker = "user-$([guid]::NewGuid().ToString('n'))"
        $hostile = "Write-Output '$marker'`n'@`n`$x = 1; # `"`$(Remove-Item C:\ -Recurse)`""
        Invoke-VmbusOpsGuest -VMName 'web01' -Credential $credential -Script $hostile, 'exit 3' -StepIndex 4, 5 -RunId 'run-1'
        $bound.Set | Should -Be 'VMName'
        $bound.Parameters.VMName | Should -Be 'web01'
        $bound.Parameters.Credential | Should -Be $credential
        $bound.Parameters.ScriptBlock | Should -BeOfType [scriptblock]
        $bound.Parameters.ScriptBlock.ToString() | Should -Not -BeLike "*$marker*"
        $bound.Parameters.ScriptBlock.Ast.ParamBlock.Parameters.Name.VariablePath.UserPath | Should -Be 'RunId', 'StepIndex', 'Script', 'StepArguments'
        $arguments = $bound.Parameters.ArgumentList
        $arguments.Count | Should -Be 4
        $arguments[0] | Should -Be 'run-1'
        $arguments[1] | Should -Be 4, 5
        $arguments[2] | Should -BeExactly $hostile, 'exit 3'
        @($arguments[3]).Count | Should -Be 0
        $first = $bound.Parameters.ScriptBlock.ToString()
        Invoke-VmbusOpsGuest -VMName 'web01' -Credential $credential -Script 'Get-Date' -StepIndex 0 -RunId 'run-2'
        $bound.Parameters.ScriptBlock.ToString() | Should -BeExactly $first
    }

    It 'targets a VM by id, and passes a single step''s arguments through' {
        $id = [guid]::NewGuid()
        Invoke-VmbusOpsGuest -VMId $id -Credential $credential -Script 'param($a, $b) $a + $b' -StepIndex 0 -RunId 'run-3' -ArgumentList 'x', 2
        $bound.Set | Should -Be 'VMId'
        $bound.Parameters.VMId | Should -Be $id
        $bound.Parameters.ArgumentList[3] | Should -Be 'x', 2
    }

    It 'refuses <Why>' -ForEach @(
        @{ Why = 'steps and indices that do not pair'; Splat = @{ VMName = 'web01'; Script = 'a', 'b'; StepIndex = 0; RunId = 'r' }; Error = '*steps*' }
        @{ Why = 'a run id that is not a name'; Splat = @{ VMName = 'web01'; Script = 'a'; StepIndex = 0; RunId = 'r;x' }; Error = '*RunId*' }
    ) {
        { Invoke-VmbusOpsGuest @Splat -Credential $credential } | Should -Throw -ExpectedMessage $Error
        $bound | Should -BeNullOrEmpty
    }
}

Describe 'The staging functions on a real file system' {
    BeforeAll {
        # The role's bodies with one substitution: the staging root C:\ProgramData\vmbusops\staging
        # and the path separator after it and after the job folder become this TestDrive root and
        # '/'. Each replacement must happen exactly where the role writes it, or the test stops.
        $root = Join-Path $TestDrive 'staging'
        $null = New-Item -ItemType Directory -Path $root
        $rootPattern = [regex]::Escape($root + '/')
        foreach ($name in 'Write-VmbusOpsStagedFile', 'Remove-VmbusOpsStagingFolder') {
            $text = ($role.FunctionDefinitions | Where-Object Name -EQ $name).ScriptBlock.ToString()
            $needle = "'^C:\\ProgramData\\vmbusops\\staging\\job-"
            ([regex]::Matches($text, [regex]::Escape($needle))).Count | Should -Be 1 -Because "$name's path pattern starts at the staging root"
            $text = $text.Replace($needle, "'^" + $rootPattern + 'job-')
            if ($name -eq 'Write-VmbusOpsStagedFile') {
                $separator = '[A-Za-z0-9_.-]+\\[A-Za-z0-9_]'
                ([regex]::Matches($text, [regex]::Escape($separator))).Count | Should -Be 1
                $text = $text.Replace($separator, '[A-Za-z0-9_.-]+/[A-Za-z0-9_]')
            }
            Set-Item -Path "function:script:$name" -Value ([scriptblock]::Create($text))
        }
        $data = [byte[]]::new(300000)
        [System.Random]::new(7).NextBytes($data)
    }

    It 'writes a file from chunks sent in any order, and Get-FileHash agrees with the data' {
        $path = "$root/job-7-ab12/payload.bin"
        $chunk = 65536
        $offsets = @(0..([math]::Ceiling($data.Length / $chunk) - 1) | ForEach-Object { $_ * $chunk })
        foreach ($offset in ($offsets | Sort-Object -Descending)) {
            $length = [math]::Min($chunk, $data.Length - $offset)
            Write-VmbusOpsStagedFile -Path $path -Offset $offset -Data ([byte[]]$data[$offset..($offset + $length - 1)])
        }
        [System.IO.File]::ReadAllBytes($path).Length | Should -Be $data.Length
        $expected = [System.BitConverter]::ToString([System.Security.Cryptography.SHA256]::HashData($data)).Replace('-', '')
        (Get-FileHash -LiteralPath $path -Algorithm SHA256).Hash | Should -Be $expected
    }

    It 'writes an empty file' {
        Write-VmbusOpsStagedFile -Path "$root/job-empty/empty.txt" -Offset 0 -Data ([byte[]]@())
        (Get-Item -LiteralPath "$root/job-empty/empty.txt").Length | Should -Be 0
    }

    It 'refuses to write <Why>' -ForEach @(
        @{ Why = 'outside a job folder'; Relative = 'other/a.txt' }
        @{ Why = 'in the root itself'; Relative = 'a.txt' }
        @{ Why = 'in a folder below a job folder'; Relative = 'job-1/sub/a.txt' }
        @{ Why = 'through ..'; Relative = 'job-1/../../escaped.txt' }
        @{ Why = 'a file name that is ..'; Relative = 'job-1/..' }
        @{ Why = 'in a sibling whose name starts like the root'; Absolute = '-evil/job-1/a.txt' }
        @{ Why = 'an absolute path elsewhere'; Elsewhere = $true }
    ) {
        $path = if ($Elsewhere) { Join-Path $TestDrive 'elsewhere.txt' } elseif ($Absolute) { $root + $Absolute } else { "$root/$Relative" }
        $before = @(Get-ChildItem -Recurse -Force -LiteralPath $TestDrive).FullName
        { Write-VmbusOpsStagedFile -Path $path -Offset 0 -Data ([byte[]](1, 2, 3)) } | Should -Throw -ErrorId 'ParameterArgumentValidationError*'
        @(Get-ChildItem -Recurse -Force -LiteralPath $TestDrive).FullName | Should -Be $before
    }

    It 'refuses a negative offset' {
        { Write-VmbusOpsStagedFile -Path "$root/job-1/a.txt" -Offset -1 -Data ([byte[]](1)) } | Should -Throw -ErrorId 'ParameterArgumentValidationError*'
    }

    It 'removes a job folder with everything in it, and a missing one quietly' {
        Write-VmbusOpsStagedFile -Path "$root/job-gone/a.txt" -Offset 0 -Data ([byte[]](1))
        Remove-VmbusOpsStagingFolder -Path "$root/job-gone"
        Test-Path -LiteralPath "$root/job-gone" | Should -BeFalse
        { Remove-VmbusOpsStagingFolder -Path "$root/job-never" } | Should -Not -Throw
    }

    It 'refuses to remove <Why>' -ForEach @(
        @{ Why = 'the staging root'; Relative = '' }
        @{ Why = 'a folder that is not a job''s'; Relative = 'other' }
        @{ Why = 'a file in a job folder'; Relative = 'job-keep/a.txt' }
        @{ Why = 'a path through ..'; Relative = 'job-keep/..' }
    ) {
        Write-VmbusOpsStagedFile -Path "$root/job-keep/a.txt" -Offset 0 -Data ([byte[]](1))
        $null = New-Item -ItemType Directory -Force -Path "$root/other"
        { Remove-VmbusOpsStagingFolder -Path "$root/$Relative".TrimEnd('/') } | Should -Throw -ErrorId 'ParameterArgumentValidationError*'
        Test-Path -LiteralPath "$root/job-keep/a.txt" | Should -BeTrue
        Test-Path -LiteralPath "$root/other" | Should -BeTrue
    }
}

Describe 'The virtual account and the staging folder''s ACL' {
    BeforeAll {
        # install.ps1 is parsed, not run (it needs Windows and elevation); its access table is a
        # function of its own, defined here from its syntax tree and called.
        $installPath = Join-Path $repo 'host_agent/service/install.ps1'
        $tokens = $null; $errors = $null
        $install = [System.Management.Automation.Language.Parser]::ParseFile($installPath, [ref]$tokens, [ref]$errors)
        function Get-Assigned([string] $Name) {
            $install.FindAll({ param($a) $a -is [System.Management.Automation.Language.AssignmentStatementAst] -and
                    $a.Left.Extent.Text -eq "`$$Name" }, $true) | ForEach-Object { $_.Right.Extent.Text }
        }
        $accessFunction = $install.Find({ param($a) $a -is [System.Management.Automation.Language.FunctionDefinitionAst] -and
                $a.Name -eq 'Get-VmbusOpsStagingAccess' }, $true)
    }

    It 'install.ps1 grants the staging folder to one group besides SYSTEM and Administrators' {
        $accessFunction | Should -Not -BeNullOrEmpty -Because 'install.ps1 sets up the staging folder'
        . ([scriptblock]::Create($accessFunction.Extent.Text))
        $group = @(Get-Assigned 'stagingGroup')
        $group.Count | Should -Be 1
        $group = [scriptblock]::Create($group[0]).InvokeReturnAsIs()
        $grants = Get-VmbusOpsStagingAccess -Group $group
        @($grants | Where-Object Identity -NotIn 'S-1-5-18', 'S-1-5-32-544').Identity | Should -Be @($group)
        ($grants | Where-Object Identity -EQ $group).Rights | Should -Be 'Modify'
    }

    It 'the virtual account joins that group, and no administrators group' {
        . ([scriptblock]::Create($accessFunction.Extent.Text))
        $group = [scriptblock]::Create(@(Get-Assigned 'stagingGroup')[0]).InvokeReturnAsIs()
        $session.RunAsVirtualAccount | Should -BeTrue
        $session.RunAsVirtualAccountGroups | Should -Contain $group
        $session.RunAsVirtualAccountGroups | Should -Contain 'Hyper-V Administrators'
        $session.RunAsVirtualAccountGroups | Where-Object { $_ -match 'Administrators$' -and $_ -ne 'Hyper-V Administrators' } |
            Should -BeNullOrEmpty
    }

    It 'install.ps1 creates the staging folder where the role''s path patterns point' {
        Get-Assigned 'stateDir' | Should -Be "Join-Path `$env:ProgramData 'vmbusops'"
        Get-Assigned 'stagingDir' | Should -Be "Join-Path `$stateDir 'staging'"
        $pattern = ($role.VisibleCmdlets | Where-Object Name -EQ 'Copy-VMFile').Parameters |
            Where-Object Name -EQ 'SourcePath' | ForEach-Object ValidatePattern
        $pattern | Should -BeLike '^C:\\ProgramData\\vmbusops\\staging\\job-*'
    }
}

Describe 'The guest script Invoke-VmbusOpsGuest hands over, run where a guest would run it' {
    BeforeAll {
        # Invoke-Command is shadowed again, this time by one that does what PowerShell Direct does
        # with the block: its text is run in a fresh runspace (the guest) with -ArgumentList as
        # arguments. Information records carry the step markers; $env:TEMP is the guest's temp.
        $body = ($role.FunctionDefinitions | Where-Object Name -EQ 'Invoke-VmbusOpsGuest').ScriptBlock.ToString()
        Set-Item -Path function:script:Invoke-VmbusOpsGuest -Value ([scriptblock]::Create($body))
        $credential = [pscredential]::new('guest\Administrator', (ConvertTo-SecureString -String ([guid]::NewGuid()) -AsPlainText -Force))
        function Invoke-Command {
            [CmdletBinding(DefaultParameterSetName = 'VMName')]
            param(
                [Parameter(Mandatory, ParameterSetName = 'VMName')] [string[]] $VMName,
                [Parameter(Mandatory, ParameterSetName = 'VMId')] [guid[]] $VMId,
                [Parameter(Mandatory)] [pscredential] $Credential,
                [Parameter(Mandatory)] [scriptblock] $ScriptBlock,
                [object[]] $ArgumentList
            )
            $guest = [powershell]::Create()
            try {
                $null = $guest.AddScript($ScriptBlock.ToString())
                foreach ($a in $ArgumentList) { $null = $guest.AddArgument($a) }
                $output = $guest.Invoke()
                [pscustomobject]@{
                    Output  = @($output | ForEach-Object { "$_" })
                    Markers = @($guest.Streams.Information | Where-Object { $_.Tags -contains 'vmbusops.step' } | ForEach-Object { "$($_.MessageData)" })
                    Errors  = @($guest.Streams.Error | ForEach-Object { "$_" })
                }
            } finally {
                $guest.Dispose()
            }
        }
        $savedTemp = $env:TEMP
        $env:TEMP = Join-Path $TestDrive 'guest-temp'
        $null = New-Item -ItemType Directory -Force -Path $env:TEMP
        function Invoke-Steps([string[]] $Script, [object[]] $ArgumentList = @()) {
            $indices = @(0..($Script.Count - 1))
            Invoke-VmbusOpsGuest -VMName 'web01' -Credential $credential -Script $Script -StepIndex $indices -RunId 'run-g' -ArgumentList $ArgumentList
        }
    }

    AfterAll { $env:TEMP = $savedTemp }

    It 'marks each step and stops after the first that exits non-zero' {
        $r = Invoke-Steps 'Write-Output a', 'Write-Output b; exit 3', 'Write-Output c'
        $r.Output | Should -Be 'a', 'b'
        $r.Markers | Should -Be 'vmbusops-step begin 0', 'vmbusops-step end 0 exit=0 errors=0', 'vmbusops-step begin 1', 'vmbusops-step end 1 exit=3 errors=0'
    }

    It 'reports a throw as exit code 1 with its error, and runs nothing after it' {
        $r = Invoke-Steps 'throw "broken"', 'Write-Output never'
        $r.Markers | Should -Be 'vmbusops-step begin 0', 'vmbusops-step end 0 exit=1 errors=1'
        $r.Errors | Should -Be 'broken'
        $r.Output | Should -BeNullOrEmpty
    }

    It 'runs a step on past a non-terminating error, then counts it and runs nothing after' {
        $r = Invoke-Steps 'Write-Error "soft"; Write-Output after', 'Write-Output never'
        $r.Output | Should -Be 'after'
        $r.Errors | Should -Be 'soft'
        $r.Markers | Should -Be 'vmbusops-step begin 0', 'vmbusops-step end 0 exit=0 errors=1'
    }

    It 'takes a native command''s exit code, and does not count its stderr lines' {
        $r = Invoke-Steps '& /bin/sh -c "echo noise 1>&2; exit 0"', '& /bin/sh -c "exit 4"'
        $r.Markers | Should -Be 'vmbusops-step begin 0', 'vmbusops-step end 0 exit=0 errors=0', 'vmbusops-step begin 1', 'vmbusops-step end 1 exit=4 errors=0'
    }

    It 'ends only the step on a stray break' {
        $r = Invoke-Steps 'Write-Output x; break; Write-Output y', 'Write-Output z'
        $r.Output | Should -Be 'x', 'z'
    }

    It 'gives a lone step its arguments, and leaves no step file behind' {
        $r = Invoke-Steps 'param($a, $b) Write-Output "$a$b"' -ArgumentList 'x', 2
        $r.Output | Should -Be 'x2'
        @(Get-ChildItem -LiteralPath (Join-Path $env:TEMP 'vmbusops')) | Should -BeNullOrEmpty
    }
}
