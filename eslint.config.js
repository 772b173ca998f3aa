import neostandard from 'neostandard'
import globals from 'globals'

export default [
  ...neostandard({ ts: true, ignores: ['dist/**', 'node_modules/**', '.tap/**'] }),
  { files: ['demo/public/**/*.js'], languageOptions: { globals: globals.browser, sourceType: 'script' } }
]
