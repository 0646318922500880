<#
    Every PowerShell file vmbusops ships runs on Windows PowerShell 5.1 (Hyper-V hosts, guests,
    runbook workers), but only PowerShell 7 runs here: each file is parsed by PowerShell's own
    parser and its syntax tree refused if it holds a construct 5.1 cannot run
    (WindowsPowerShell51.psm1 lists them). Proof that 5.1 accepts the files needs a 5.1 host;
    this proves they use nothing this check knows 5.1 lacks.
#>

BeforeDiscovery {
    Import-Module (Join-Path $PSScriptRoot 'WindowsPowerShell51.psm1') -Force
    $repo = (Resolve-Path (Join-Path $PSScriptRoot '../..')).ProviderPath
    $files = foreach ($f in Get-ShippedPowerShellFile -Root $repo) {
        @{ Path = $f.FullName; Name = $f.FullName.Substring($repo.Length + 1) }
    }
}

BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'WindowsPowerShell51.psm1') -Force
}

AfterAll {
    Remove-Module WindowsPowerShell51 -ErrorAction SilentlyContinue
}

Describe 'The shipped PowerShell files' {
    It 'include the module, the JEA files, the install script and the guest invoker' {
        $repo = (Resolve-Path (Join-Path $PSScriptRoot '../..')).ProviderPath
        $names = (Get-ShippedPowerShellFile -Root $repo).FullName | ForEach-Object { $_.Substring($repo.Length + 1) -replace '\\', '/' }
        foreach ($expected in 'host_agent/powershell/VmbusOps.psm1', 'host_agent/powershell/VmbusOps.psd1',
            'host_agent/service/install.ps1', 'host_agent/VmbusOps.pssc',
            'host_agent/VmbusOpsHost/RoleCapabilities/VmbusOpsHost.psrc',
            'src/vmbusops/guestops/powershell/Invoke-VmbusOpsGuest.ps1') {
            $names | Should -Contain $expected
        }
    }
}

Describe 'Windows PowerShell 5.1 can run <Name>' -ForEach $files {
    BeforeAll {
        $tokens = $null; $errors = $null
        $ast = [System.Management.Automation.Language.Parser]::ParseFile($Path, [ref]$tokens, [ref]$errors)
    }

    It 'parses' {
        $errors | ForEach-Object { "line $($_.Extent.StartLineNumber): $($_.Message)" } | Should -BeNullOrEmpty
    }

    It 'uses no PowerShell 7 syntax, cmdlet or parameter' {
        Find-PowerShell7Construct -Ast $ast | ForEach-Object { "line $($_.Line): $($_.What): $($_.Text) $($_.Origin)" } |
            Should -BeNullOrEmpty
    }

    It 'is ASCII or has a byte order mark (5.1 reads BOM-less files as ANSI)' {
        Test-WindowsPowerShellEncoding -Bytes ([System.IO.File]::ReadAllBytes($Path)) | Should -BeNullOrEmpty
    }
}

Describe 'The check refuses what 5.1 cannot run' {
    It 'refuses <Why>' -ForEach @(
        @{ Why = 'a ternary'; Script = '$a = $true ? 1 : 2' }
        @{ Why = '??'; Script = '$a = $b ?? 2' }
        @{ Why = '??='; Script = '$a ??= 2' }
        @{ Why = '?.'; Script = '${a}?.Length' }
        @{ Why = '?.Method()'; Script = '${a}?.ToString()' }
        @{ Why = '?[]'; Script = '${a}?[0]' }
        @{ Why = '&&'; Script = 'Get-Item x && Remove-Item x' }
        @{ Why = '||'; Script = 'Get-Item x || throw "none"' }
        @{ Why = 'a clean block'; Script = 'function f { process { 1 } clean { 2 } }' }
        @{ Why = 'a background &'; Script = 'Start-Sleep 1 &' }
        @{ Why = 'ForEach-Object -Parallel'; Script = '1..3 | ForEach-Object -Parallel { $_ }' }
        @{ Why = '% -Parallel (an alias)'; Script = '1..3 | % -Parallel { $_ } -ThrottleLimit 2' }
        @{ Why = 'ConvertFrom-Json -AsHashtable'; Script = '$x | ConvertFrom-Json -AsHashtable' }
        @{ Why = 'an abbreviated -AsHash'; Script = '$x | ConvertFrom-Json -AsHash' }
        @{ Why = 'Invoke-RestMethod -SkipCertificateCheck'; Script = 'Invoke-RestMethod -Uri $u -SkipCertificateCheck' }
        @{ Why = 'a module-qualified irm -StatusCodeVariable'; Script = 'Microsoft.PowerShell.Utility\Invoke-RestMethod $u -StatusCodeVariable s' }
        @{ Why = 'irm -Authentication'; Script = 'irm $u -Authentication Bearer -Token $t' }
        @{ Why = 'Invoke-WebRequest -ResponseHeadersVariable'; Script = 'Invoke-WebRequest $u -ResponseHeadersVariable h' }
        @{ Why = 'Join-String'; Script = '1, 2 | Join-String -Separator ","' }
        @{ Why = 'Get-Error'; Script = 'Get-Error' }
        @{ Why = 'Test-Json'; Script = 'Test-Json -Json $j' }
        @{ Why = '-Encoding utf8NoBOM'; Script = 'Set-Content -Path p -Value v -Encoding utf8NoBOM' }
        @{ Why = '-Encoding Byte (gone in 7)'; Script = 'Get-Content p -Encoding Byte' }
        @{ Why = 'Join-Path with two children'; Script = 'Join-Path $a b c' }
        @{ Why = '$IsWindows'; Script = 'if ($IsWindows) { 1 }' }
        @{ Why = '`u{}'; Script = '"`u{2713}"' }
        @{ Why = 'a u suffix'; Script = '$a = 5u' }
        @{ Why = 'a ternary inside a here-string script'; Script = "`$s = @'`n`$a = `$true ? 1 : 2`n'@" }
    ) {
        Find-PowerShell7Construct -Script $Script | Should -Not -BeNullOrEmpty
    }

    It 'accepts the 5.1 way of saying the same things' {
        $script = @'
$a = if ($true) { 1 } else { 2 }
$b = if ($null -ne $c) { $c } else { 2 }
if ($a) { $a.Length; $a.ToString(); $a[0] }
Get-Item x; if ($?) { Remove-Item x }
1..3 | ForEach-Object -Process { $_ }
$x | ConvertFrom-Json
Invoke-RestMethod -Uri $u -Method Post -InFile $f -ContentType 'application/octet-stream' -UseBasicParsing
Set-Content -Path p -Value v -Encoding UTF8
Join-Path (Join-Path $a b) c
Join-Path -Path $a -ChildPath b
$n = 5L; $m = 0x10; $k = 1kb
"plain $a `t"
'@ + "`n`$s = @'`n`$h = @{ Name = 'x' }; if (`$h) { 1 }`n'@`n"
        Find-PowerShell7Construct -Script $script | ForEach-Object { "line $($_.Line): $($_.What)" } | Should -BeNullOrEmpty
    }

    It 'leaves out a file that declares it needs PowerShell 7, and only such a file' {
        $tree = Join-Path $TestDrive 'tree'
        $null = New-Item -ItemType Directory -Force -Path "$tree/host_agent", "$tree/src"
        Set-Content -LiteralPath "$tree/src/for7.ps1" -Value '#Requires -Version 7.0', '$a = $b ?? 1'
        Set-Content -LiteralPath "$tree/src/core.ps1" -Value '#Requires -PSEdition Core', '1'
        Set-Content -LiteralPath "$tree/src/for51.ps1" -Value '#Requires -Version 5.1', '1'
        Set-Content -LiteralPath "$tree/host_agent/plain.psm1" -Value '1'
        (Get-ShippedPowerShellFile -Root $tree).Name | Sort-Object | Should -Be 'for51.ps1', 'plain.psm1'
    }

    It 'refuses a BOM-less file with non-ASCII text, and accepts it with a BOM' {
        $text = [System.Text.Encoding]::UTF8.GetBytes("# caf$([char]0xE9)`n")
        Test-WindowsPowerShellEncoding -Bytes $text | Should -Not -BeNullOrEmpty
        Test-WindowsPowerShellEncoding -Bytes ([byte[]](0xEF, 0xBB, 0xBF) + $text) | Should -BeNullOrEmpty
        Test-WindowsPowerShellEncoding -Bytes ([System.Text.Encoding]::ASCII.GetBytes("# cafe`n")) | Should -BeNullOrEmpty
    }
}
