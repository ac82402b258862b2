// The page-facing entry of the analytics-next bundle: the npm package as a plain script.
import { AnalyticsBrowser } from '@segment/analytics-next'

window.AnalyticsBrowser = AnalyticsBrowser
